"""kv-cache-utilization-scorer: the emptier the endpoint's KV cache, the better."""
from __future__ import annotations

from ..framework import Scorer, register


@register
class KVCacheUtilizationScorer(Scorer):
    type_name = "kv-cache-utilization-scorer"
    bounded = True

    def score(self, state, request, endpoints):
        out = [1.0 - ep.metrics.kv_usage for ep in endpoints]
        for i, s in enumerate(out):
            if not 0.0 <= s <= 1.0:  # usage outside [0, 1] clamped; unknown (NaN) scores as a full cache
                out[i] = 1.0 if s > 1.0 else 0.0
        return out
