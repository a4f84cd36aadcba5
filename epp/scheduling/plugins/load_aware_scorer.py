"""load-aware-scorer: an empty queue scores 0.5, a queue of `threshold` or more 0, linear between.
The 0.5 ceiling leaves the upper half of the range to other scorers' opinion, as upstream."""
from __future__ import annotations

from ..framework import Scorer, register


@register
class LoadAwareScorer(Scorer):
    type_name = "load-aware-scorer"
    bounded = True

    def __init__(self, name: str | None = None, threshold: int = 128) -> None:
        super().__init__(name)
        if isinstance(threshold, bool) or not isinstance(threshold, int):
            raise ValueError(f"{self.type_name}: parameter threshold must be an integer, got {threshold!r}")
        self.threshold = threshold if threshold > 0 else 128  # upstream: <= 0 means the default

    def score(self, state, request, endpoints):
        t = self.threshold
        out = []
        for ep in endpoints:
            q = ep.metrics.waiting
            out.append(0.5 * (1.0 - min(q, t) / t) if q > 0 else 0.5)  # NaN fails q > 0: idle
        return out
