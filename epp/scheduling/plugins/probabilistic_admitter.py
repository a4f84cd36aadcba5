"""probabilistic-admitter: sheds sheddable requests (priority < 0) with a probability that rises
steeply with the pool's load; requests with priority >= 0 are always admitted, and so is any request
when there are no candidates.

saturation = mean over candidates of max(waiting / queueDepthThreshold, kv_usage /
kvCacheUtilThreshold), an endpoint without metrics counting as 1; refused with probability
min(saturation^power x k, 1) (defaults 5, 0.8, power 5, k 300: ~2% at 0.15, all at ~0.34). A refusal
is answered 500 "request cannot be admitted: ..." as upstream."""
from __future__ import annotations

import random

from ..framework import Admitter, need_int, need_number, params_error, register


@register
class ProbabilisticAdmitter(Admitter):
    type_name = "probabilistic-admitter"

    def __init__(self, name: str | None = None, queueDepthThreshold: int = 5, kvCacheUtilThreshold: float = 0.8,
                 power: float = 5.0, k: float = 300.0, rng: random.Random | None = None) -> None:
        super().__init__(name)
        t = self.type_name
        self.queue = need_int(t, "queueDepthThreshold", queueDepthThreshold, -(1 << 62))
        self.kv = need_number(t, "kvCacheUtilThreshold", kvCacheUtilThreshold)
        self.power = need_number(t, "power", power)
        self.k = need_number(t, "k", k)
        for key, v in (("queueDepthThreshold", self.queue), ("kvCacheUtilThreshold", self.kv), ("power", self.power),
                       ("k", self.k)):
            if v <= 0:
                raise params_error(t, f"{key} must be > 0, got {v}")
        self.random = (rng or random.Random()).random

    def pool_saturation(self, endpoints) -> float:
        total = 0.0
        for ep in endpoints:
            m = ep.metrics
            total += 1.0 if not m.updated else max(m.waiting / self.queue, m.kv_usage / self.kv)
        return total / len(endpoints)

    def admit(self, request, endpoints):
        if request.priority >= 0 or not endpoints:
            return None
        sat = self.pool_saturation(endpoints)
        prob = min(sat ** self.power * self.k, 1.0)
        if self.random() < prob:
            return f"{self.type_name}: rejected, saturation={sat:.3f} prob={prob:.2f}"
        return None
