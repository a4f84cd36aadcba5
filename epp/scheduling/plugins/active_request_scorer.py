"""active-request-scorer: fewer requests in flight from this EPP is better. The count is the EPP's
own (incremented when a request is routed, decremented when its stream ends, cancelled or not), so
it reacts between scrapes. At or below idleThreshold an endpoint scores 1; above, busy endpoints
score (max - n) / max x maxBusyScore."""
from __future__ import annotations

from ..framework import Scorer, need_int, need_number, register


@register
class ActiveRequestScorer(Scorer):
    type_name = "active-request-scorer"
    bounded = True

    def __init__(self, name: str | None = None, idleThreshold: int = 0, maxBusyScore: float = 1.0,
                 inFlightLoadProducerName: str = "", requestTimeout: str | None = None) -> None:
        super().__init__(name)
        self.idle = need_int(self.type_name, "idleThreshold", idleThreshold, 0)
        # upstream ignores values outside [0, 1]
        busy = need_number(self.type_name, "maxBusyScore", maxBusyScore)
        self.max_busy = busy if 0.0 <= busy <= 1.0 else 1.0
        # requestTimeout: deprecated upstream (ignored); our counts cannot leak, streams always end

    def score(self, state, request, endpoints):
        counts = [ep.in_flight for ep in endpoints]
        top = max(counts, default=0)
        idle, busy = self.idle, self.max_busy
        return [1.0 if n <= idle else (top - n) / top * busy for n in counts]
