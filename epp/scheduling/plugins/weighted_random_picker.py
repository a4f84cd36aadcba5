"""weighted-random-picker: endpoints drawn with probability proportional to their total score,
without replacement (A-Res: key = U^(1/score), highest keys win). Zero scores come last, in random
order; when every score is 0 the draw is uniform, so a pool that scores nothing still spreads load."""
from __future__ import annotations

import math

from ..framework import register
from .random_picker import RandomPicker


@register
class WeightedRandomPicker(RandomPicker):
    """Same parameters as random-picker (maxNumOfEndpoints, and an rng for tests)."""
    type_name = "weighted-random-picker"

    def pick(self, state, request, endpoints, scores):
        if not endpoints:
            return []
        rnd = self.rng.random
        positive = [s if s > 0.0 else 0.0 for s in scores]  # NaN and negatives weigh nothing
        if not any(positive):
            positive = [1.0] * len(endpoints)
        keys = []
        for i, s in enumerate(positive):
            # log(U)/s orders like U^(1/s) without underflowing for small scores; a zero score
            # is never drawn ahead of a positive one but still serves as a last fallback
            keys.append((math.log(rnd() or 1e-300) / s if s > 0.0 else -math.inf, rnd(), i))
        keys.sort(reverse=True)
        return [endpoints[i] for _, _, i in keys[:self.max_endpoints]]
