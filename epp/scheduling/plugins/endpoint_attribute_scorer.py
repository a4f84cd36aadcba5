"""endpoint-attribute-scorer (Alpha): scores by one numeric endpoint attribute (a core-metrics-extractor
custom metric), linearly: (value - min) / (max - min), inverted for linear_lower_is_better. The range is
the candidates' own (normalization adaptiveRange, the default; all equal -> 1) or a fixed one
(fixedRange {min, max}, values clamped). An endpoint without the attribute scores 0 (and does not
widen the adaptive range)."""
from __future__ import annotations

from ..framework import ALPHA, Scorer, need_number, need_str, params_error, register
from .endpoint_attribute_filter import attribute

ALGORITHMS = ("linear_lower_is_better", "linear_higher_is_better")


@register
class EndpointAttributeScorer(Scorer):
    type_name = "endpoint-attribute-scorer"
    stability = ALPHA
    bounded = True

    def __init__(self, name: str | None = None, attributeKey: str = "", algorithm: dict | None = None) -> None:
        super().__init__(name)
        t = self.type_name
        self.key = need_str(t, "attributeKey", attributeKey)
        if not self.key:
            raise params_error(t, "endpoint attribute scorer requires a non-empty attributeKey")
        algo = algorithm or {}
        if not isinstance(algo, dict) or set(algo) - {"type", "normalization"}:
            raise params_error(t, "algorithm takes type and normalization")
        self.lower_better = need_str(t, "algorithm.type", algo.get("type"), ALGORITHMS) == ALGORITHMS[0]
        norm = algo.get("normalization") or {}
        if not isinstance(norm, dict) or set(norm) - {"fixedRange", "adaptiveRange"}:
            raise params_error(t, "normalization takes fixedRange or adaptiveRange")
        if "fixedRange" in norm and "adaptiveRange" in norm:
            raise params_error(t, "at most one normalization strategy, got both fixedRange and adaptiveRange")
        self.fixed = None
        fixed = norm.get("fixedRange")
        if fixed is not None:
            if not isinstance(fixed, dict) or set(fixed) - {"min", "max"}:
                raise params_error(t, "fixedRange takes min and max")
            lo, hi = need_number(t, "fixedRange.min", fixed.get("min", 0)), need_number(t, "fixedRange.max",
                                                                                        fixed.get("max", 0))
            if lo >= hi:
                raise params_error(t, f"normalization.fixedRange requires min < max, got min {lo}, max {hi}")
            self.fixed = (lo, hi)

    def score(self, state, request, endpoints):
        values = [attribute(ep, self.key) for ep in endpoints]
        if self.fixed is not None:
            lo, hi = self.fixed
        else:
            present = [v for v in values if v is not None and v == v]   # NaN never widens the range
            if not present:
                return [0.0] * len(endpoints)
            lo, hi = min(present), max(present)
        out = []
        for v in values:
            if v is None or v != v:
                out.append(0.0)
            elif hi == lo:
                out.append(1.0)
            else:
                x = min(1.0, max(0.0, (v - lo) / (hi - lo)))
                out.append(1.0 - x if self.lower_better else x)
        return out
