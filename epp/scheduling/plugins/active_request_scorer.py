"""active-request-scorer: fewer requests in flight from this EPP is better. The counts are
inflight-load-producer's (the one named by inFlightLoadProducerName, else the configured one, which
the loader adds when none is): +1 when a request is routed, -1 when its stream ends, cancelled or
not, so they react between scrapes. At or below idleThreshold an endpoint scores 1; above, busy
endpoints score (max - n) / max x maxBusyScore, max being the busiest candidate's count."""
from __future__ import annotations

from ..framework import BindsPlugins, InFlightLoadConsumer, Scorer, need_int, need_number, register
from .inflight_load_producer import find_inflight


@register
class ActiveRequestScorer(Scorer, BindsPlugins, InFlightLoadConsumer):
    type_name = "active-request-scorer"
    bounded = True

    def __init__(self, name: str | None = None, idleThreshold: int = 0, maxBusyScore: float = 1.0,
                 inFlightLoadProducerName: str = "", requestTimeout: str | None = None) -> None:
        super().__init__(name)
        self.idle = need_int(self.type_name, "idleThreshold", idleThreshold, 0)
        # upstream ignores values outside [0, 1]
        busy = need_number(self.type_name, "maxBusyScore", maxBusyScore)
        self.max_busy = busy if 0.0 <= busy <= 1.0 else 1.0
        self.producer_name = inFlightLoadProducerName
        self.producer = None
        # requestTimeout: deprecated upstream (ignored); our counts cannot leak, streams always end

    def wants_inflight_load(self) -> bool:
        return True

    def bind(self, plugins: dict) -> None:
        self.producer = find_inflight(plugins, self.producer_name)

    def score(self, state, request, endpoints):
        p = self.producer
        # built in code without a producer: request control's own per-endpoint count
        counts = [p.load(ep.address)[0] for ep in endpoints] if p is not None else [ep.in_flight for ep in endpoints]
        top = max(counts, default=0)
        idle, busy = self.idle, self.max_busy
        return [1.0 if n <= idle else (top - n) / top * busy for n in counts]
