"""running-requests-size-scorer: fewer running requests is better, min-max normalised over the candidates."""
from __future__ import annotations

from ..framework import Scorer, register
from .queue_scorer import min_max_inverse


@register
class RunningRequestsSizeScorer(Scorer):
    type_name = "running-requests-size-scorer"
    bounded = True

    def score(self, state, request, endpoints):
        return min_max_inverse([ep.metrics.running for ep in endpoints])
