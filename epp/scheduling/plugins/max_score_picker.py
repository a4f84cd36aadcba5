"""max-score-picker: highest total first, ties broken at random; maxNumOfEndpoints > 1 returns the
runners-up too, as fallbacks in order."""
from __future__ import annotations

import random

from ..framework import Picker, max_endpoints, register


@register
class MaxScorePicker(Picker):
    type_name = "max-score-picker"

    def __init__(self, name: str | None = None, maxNumOfEndpoints: int = 1, rng: random.Random | None = None) -> None:
        super().__init__(name)
        self.max_endpoints = max_endpoints(self.type_name, maxNumOfEndpoints)
        self._random = (rng or random.Random()).random

    def pick(self, state, request, endpoints, scores):
        if self.max_endpoints == 1:
            best, best_key = None, None
            rnd = self._random
            for ep, s in zip(endpoints, scores):
                key = (s, rnd())
                if best_key is None or key > best_key:
                    best, best_key = ep, key
            return [best] if best is not None else []
        rnd = self._random
        order = sorted(zip(scores, [rnd() for _ in endpoints], range(len(endpoints))), reverse=True)
        return [endpoints[i] for _, _, i in order[:self.max_endpoints]]
