"""kv-cache-utilization-scorer: the emptier the endpoint's KV cache, the better."""
from __future__ import annotations

from ..framework import Scorer, register


@register
class KVCacheUtilizationScorer(Scorer):
    type_name = "kv-cache-utilization-scorer"

    def score(self, state, request, endpoints):
        # a usage outside [0, 1] is clamped; an unknown (NaN) one scores as a full cache
        return [1.0 - min(1.0, max(0.0, u)) if u == u else 0.0 for u in (ep.metrics.kv_usage for ep in endpoints)]
