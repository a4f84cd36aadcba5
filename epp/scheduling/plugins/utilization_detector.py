"""utilization-detector: how saturated the pool is, and which endpoints are past their limits.

Per endpoint: max(waiting / queueDepthThreshold, kv_usage / kvCacheUtilThreshold), and 1.0 when its
metrics are older than metricsStalenessThreshold (fail closed; counted in stale_endpoints); the
pool's saturation is the mean. Request control sheds sheddable requests when it reaches 1; flow
control holds requests while it is at or above a band's ceiling. As a filter in a profile it drops
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
        self._until = 0.0

    def endpoint_saturation(self, ep, t: float) -> float:
        m = ep.metrics
        if not m.fresh(t, self.staleness):
            return 1.0
        return max(m.waiting / self.queue, m.kv_usage / self.kv)

    def saturation(self, endpoints) -> float:
        if not endpoints:
            self.stale_endpoints = 0
            self._until = float("inf")
            return 1.0
        t, q, kv, staleness = now(), self.queue, self.kv, self.staleness
        total, stale, oldest = 0.0, 0, float("inf")
        for ep in endpoints:
            m = ep.metrics
            if m.updated <= 0.0 or t - m.updated > staleness:   # Metrics.fresh, inlined (per dispatch)
                total += 1.0
                stale += 1
            else:
                w, k = m.waiting / q, m.kv_usage / kv
                total += w if w > k else k
                if m.updated < oldest:
                    oldest = m.updated
        self.stale_endpoints = stale
        self._until = oldest + staleness   # the reading holds until a scrape, or until one turns stale
        return total / len(endpoints)

    def reusable_until(self) -> float:
        return self._until

    def filter(self, state, request, endpoints):
        t = now()
        q_max = self.queue * (1 + self.headroom)
        kv_max = min(1.0, self.kv * (1 + self.headroom))
        kept = [ep for ep in endpoints
                if ep.metrics.fresh(t, self.staleness) and ep.metrics.waiting <= q_max and ep.metrics.kv_usage <= kv_max]
        return kept or list(endpoints)
