"""queue-scorer: fewer waiting requests is better, min-max normalised over the candidates."""
from __future__ import annotations

from ..framework import Scorer, register


def min_max_inverse(values: list[float]) -> list[float]:
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    span = hi - lo
    return [(hi - v) / span for v in values]


@register
class QueueScorer(Scorer):
    type_name = "queue-scorer"

    def score(self, state, request, endpoints):
        return min_max_inverse([ep.metrics.waiting for ep in endpoints])
