"""random-picker: ignores scores; a uniformly random order, maxNumOfEndpoints long."""
from __future__ import annotations

import random

from ..framework import Picker, max_endpoints, register


@register
class RandomPicker(Picker):
    type_name = "random-picker"

    def __init__(self, name: str | None = None, maxNumOfEndpoints: int = 1, rng: random.Random | None = None) -> None:
        super().__init__(name)
        self.max_endpoints = max_endpoints(self.type_name, maxNumOfEndpoints)
        self.rng = rng or random.Random()

    def pick(self, state, request, endpoints, scores):
        if not endpoints:
            return []
        if self.max_endpoints == 1:
            return [endpoints[int(self.rng.random() * len(endpoints))]]
        return self.rng.sample(list(endpoints), min(self.max_endpoints, len(endpoints)))
