"""global-strict-fairness-policy: no tenant isolation. Of every flow in the band with queued items, the
one whose head item the band's ordering policy puts first is served, so the band behaves as one queue
(FCFS across tenants with the default ordering). Flow control's default fairness policy."""
from __future__ import annotations

from ..framework import FairnessPolicy, register


@register
class GlobalStrictFairnessPolicy(FairnessPolicy):
    type_name = "global-strict-fairness-policy"

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)

    def pick_flow(self, band, state):
        best, best_key = None, None
        for flow in band.active_flows():
            head = flow.peek()
            if head is None:
                continue
            key = flow.head_key()
            if best is None or key < best_key:
                best, best_key = flow, key
        return best
