"""lora-affinity-scorer: prefer endpoints where the requested adapter is already active (1.0), then
ones with a free adapter slot (0.8), then ones where it is waiting to load (0.6); else 0."""
from __future__ import annotations

from ..framework import Scorer, register


@register
class LoraAffinityScorer(Scorer):
    type_name = "lora-affinity-scorer"
    bounded = True

    def score(self, state, request, endpoints):
        adapter = request.target_model
        out = []
        for ep in endpoints:
            m = ep.metrics
            if adapter in m.running_loras:
                out.append(1.0)
            elif m.max_loras and len(m.running_loras) + len(m.waiting_loras) < m.max_loras:
                out.append(0.8)
            elif adapter in m.waiting_loras:
                out.append(0.6)
            else:
                out.append(0.0)
        return out
