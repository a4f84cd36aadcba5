"""queue-scorer: fewer waiting requests is better, min-max normalised over the candidates."""
from __future__ import annotations

from ..framework import Scorer, register


def min_max_inverse(values: list[float]) -> list[float]:
    if not values:
        return []
    if any(not v >= 0.0 for v in values):  # NaN (unknown) counts as the worst seen; negatives as 0
        known = [v for v in values if v == v]
        worst = max(known, default=0.0)
        values = [max(v, 0.0) if v == v else worst for v in values]
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    span = hi - lo
    return [(hi - v) / span for v in values]


@register
class QueueScorer(Scorer):
    type_name = "queue-scorer"
    bounded = True

    def score(self, state, request, endpoints):
        return min_max_inverse([ep.metrics.waiting for ep in endpoints])
