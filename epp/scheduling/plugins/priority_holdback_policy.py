"""priority-holdback-policy: lower priorities are held back earlier as saturation rises. Band i of N
(i = 0 the highest) gets a ceiling between maxCeiling (highest band) and minCeiling (lowest band),
linear in its rank, c_i = max - i (max - min) / (N - 1) (`domain: rank`), or in its priority value,
c_i = min + (p_i - p_min) / (p_max - p_min) (max - min) (`domain: value`). With one band it gets
maxCeiling (work-conserving). minCeiling is required, in [0, 1); maxCeiling in (0, 1], above it;
`shape: linear` is the only shape."""
from __future__ import annotations

from ..framework import ALPHA, UsageLimitPolicy, need_number, need_str, params_error, register


@register
class PriorityHoldbackPolicy(UsageLimitPolicy):
    stability = ALPHA
    type_name = "priority-holdback-policy"

    def __init__(self, name: str | None = None, minCeiling: float | None = None, maxCeiling: float = 1.0,
                 shape: str = "linear", domain: str = "rank") -> None:
        super().__init__(name)
        t = self.type_name
        if minCeiling is None:
            raise params_error(t, "minCeiling is required")
        self.min = need_number(t, "minCeiling", minCeiling)
        self.max = need_number(t, "maxCeiling", maxCeiling)
        self.shape = need_str(t, "shape", shape, ("linear",))
        self.domain = need_str(t, "domain", domain, ("rank", "value"))
        if not 0.0 <= self.min < 1.0:
            raise params_error(t, f"minCeiling must be in [0.0, 1.0), got {self.min:g}")
        if not 0.0 < self.max <= 1.0:
            raise params_error(t, f"maxCeiling must be in (0.0, 1.0], got {self.max:g}")
        if self.min >= self.max:
            raise params_error(t, f"minCeiling ({self.min:g}) must be strictly less than maxCeiling ({self.max:g})")

    def compute_limits(self, saturation, priorities):
        n = len(priorities)
        if n <= 1:
            return [self.max] * n
        lo, hi = self.min, self.max
        if self.domain == "rank":
            return [hi - i * (hi - lo) / (n - 1) for i in range(n)]
        p_max, p_min = priorities[0], priorities[-1]
        if p_max == p_min:
            return [hi] * n
        return [lo + (p - p_min) / (p_max - p_min) * (hi - lo) for p in priorities]
