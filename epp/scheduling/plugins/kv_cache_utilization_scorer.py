"""kv-cache-utilization-scorer: the emptier the endpoint's KV cache, the better."""
from __future__ import annotations

from ..framework import Scorer, register


@register
class KVCacheUtilizationScorer(Scorer):
    type_name = "kv-cache-utilization-scorer"

    def score(self, state, request, endpoints):
        return [1.0 - ep.metrics.kv_usage for ep in endpoints]
