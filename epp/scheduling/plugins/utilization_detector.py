"""utilization-detector: how saturated the pool is, and which endpoints are past their limits.

Per endpoint: max(waiting / queueDepthThreshold, kv_usage / kvCacheUtilThreshold), and 1.0 when its
metrics are older than metricsStalenessThreshold (fail closed); the pool's saturation is the mean.
Request control sheds sheddable requests when it reaches 1. As a filter in a profile it drops
endpoints above the thresholds x (1 + headroom) or stale, unless that would drop them all."""
from __future__ import annotations

from ...datalayer.endpoint import now
from ..framework import Filter, SaturationDetector, need_duration, need_number, params_error, register


@register
class UtilizationDetector(Filter, SaturationDetector):
    type_name = "utilization-detector"

    def __init__(self, name: str | None = None, queueDepthThreshold: float = 5, kvCacheUtilThreshold: float = 0.8,
                 metricsStalenessThreshold="200ms", headroom: float = 0.0) -> None:
        super().__init__(name)
        t = self.type_name
        self.queue = need_number(t, "queueDepthThreshold", queueDepthThreshold)
        self.kv = need_number(t, "kvCacheUtilThreshold", kvCacheUtilThreshold)
        if self.queue <= 0:
            raise params_error(t, "queueDepthThreshold must be > 0")
        if not 0.0 < self.kv <= 1.0:
            raise params_error(t, "kvCacheUtilThreshold must be in (0, 1]")
        self.staleness = need_duration(t, "metricsStalenessThreshold", metricsStalenessThreshold)
        if self.staleness <= 0:
            raise params_error(t, "metricsStalenessThreshold must be > 0")
        self.headroom = need_number(t, "headroom", headroom, 0.0)

    def endpoint_saturation(self, ep, t: float) -> float:
        m = ep.metrics
        if not m.fresh(t, self.staleness):
            return 1.0
        return max(m.waiting / self.queue, m.kv_usage / self.kv)

    def saturation(self, endpoints) -> float:
        if not endpoints:
            return 1.0
        t = now()
        return sum(self.endpoint_saturation(ep, t) for ep in endpoints) / len(endpoints)

    def filter(self, state, request, endpoints):
        t = now()
        q_max = self.queue * (1 + self.headroom)
        kv_max = min(1.0, self.kv * (1 + self.headroom))
        kept = [ep for ep in endpoints
                if ep.metrics.fresh(t, self.staleness) and ep.metrics.waiting <= q_max and ep.metrics.kv_usage <= kv_max]
        return kept or list(endpoints)
