"""round-robin-fairness-policy: every flow of the band with queued items gets a turn. Flow ids are sorted;
the pick starts after the flow served last and takes the first one with queued items (one dispatch per
turn; work-conserving). A light tenant waits about one dispatch per active flow, whatever a heavy
tenant's backlog; the price is global FCFS order across tenants."""
from __future__ import annotations

from ..framework import FairnessPolicy, register


class _Cursor:
    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: str | None = None   # the flow served last


@register
class RoundRobinFairnessPolicy(FairnessPolicy):
    type_name = "round-robin-fairness-policy"

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)

    def new_band_state(self) -> _Cursor:
        return _Cursor()

    def pick_flow(self, band, state: _Cursor):
        ids = sorted(band.flow_ids())
        if not ids:
            state.last = None
            return None
        # start after the last served flow; from the first when that flow is gone
        start = ids.index(state.last) + 1 if state.last in ids else 0
        n = len(ids)
        for i in range(n):
            fid = ids[(start + i) % n]
            flow = band.flow(fid)
            if flow is not None and len(flow):
                state.last = fid
                return flow
        state.last = None
        return None
