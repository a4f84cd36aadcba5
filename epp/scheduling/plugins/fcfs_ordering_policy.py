"""fcfs-ordering-policy: first come, first served within a flow. The key is the enqueue time (ties, which
only equal clock readings can make, go by arrival order). Flow control's default ordering policy."""
from __future__ import annotations

from ..framework import OrderingPolicy, register


@register
class FCFSOrderingPolicy(OrderingPolicy):
    type_name = "fcfs-ordering-policy"

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)

    def order_key(self, item) -> tuple:
        return (item.enqueue_time, item.seq)
