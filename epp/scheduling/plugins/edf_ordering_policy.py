"""edf-ordering-policy: earliest deadline first within a flow. An item's deadline is its enqueue time plus
its effective TTL; an item without a TTL (0) has none and goes after every item that has one; ties go
first come, first served. Every request gets the controller's TTL today, so in practice this is FCFS."""
from __future__ import annotations

import math

from ..framework import OrderingPolicy, register


@register
class EDFOrderingPolicy(OrderingPolicy):
    type_name = "edf-ordering-policy"

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)

    def order_key(self, item) -> tuple:
        ttl = item.effective_ttl
        deadline = item.enqueue_time + ttl if ttl > 0 else math.inf
        return (deadline, item.enqueue_time, item.seq)
