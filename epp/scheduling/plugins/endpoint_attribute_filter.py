"""endpoint-attribute-filter (Alpha): keeps the endpoints whose numeric attribute (a custom metric of
core-metrics-extractor, e.g. customMetrics: [{attributeKey: custom.queue, metricSpec: ...}]) passes
a threshold: value <operator> algorithm.threshold.value, operator LessThan, LessThanOrEqual,
GreaterThan, GreaterThanOrEqual, Equal or NotEqual. An endpoint without the attribute is kept
(onMissing Pass, the default) or dropped (Fail); when all are dropped and fallbackOnEmpty, all stay."""
from __future__ import annotations

import operator

from ..framework import ALPHA, Filter, need_bool, need_number, need_str, params_error, register

OPERATORS = {"LessThan": operator.lt, "LessThanOrEqual": operator.le, "GreaterThan": operator.gt,
             "GreaterThanOrEqual": operator.ge, "Equal": operator.eq, "NotEqual": operator.ne}


def attribute(ep, key: str) -> float | None:
    attrs = ep.metrics.attributes
    return attrs.get(key) if attrs else None


@register
class EndpointAttributeFilter(Filter):
    type_name = "endpoint-attribute-filter"
    stability = ALPHA

    def __init__(self, name: str | None = None, attribute: str = "", onMissing: str = "Pass",
                 fallbackOnEmpty: bool = False, algorithm: dict | None = None) -> None:
        super().__init__(name)
        t = self.type_name
        self.attribute = need_str(t, "attribute", attribute)
        if not self.attribute:
            raise params_error(t, "endpoint attribute filter requires a non-empty attribute")
        self.pass_missing = need_str(t, "onMissing", onMissing or "Pass", ("Pass", "Fail")) == "Pass"
        self.fallback = need_bool(t, "fallbackOnEmpty", fallbackOnEmpty)
        algo = algorithm or {}
        if not isinstance(algo, dict) or set(algo) - {"type", "threshold"}:
            raise params_error(t, "algorithm takes type and threshold")
        need_str(t, "algorithm.type", algo.get("type"), ("threshold",))
        th = algo.get("threshold")
        if not isinstance(th, dict) or set(th) - {"operator", "value"}:
            raise params_error(t, "algorithm.threshold {operator, value} is required when algorithm.type is threshold")
        self.op = OPERATORS[need_str(t, "algorithm.threshold.operator", th.get("operator"), tuple(OPERATORS))]
        self.value = need_number(t, "algorithm.threshold.value", th.get("value", 0))

    def filter(self, state, request, endpoints):
        key, op, limit, keep_missing = self.attribute, self.op, self.value, self.pass_missing
        kept = []
        for ep in endpoints:
            v = attribute(ep, key)
            if v is None:
                if keep_missing:
                    kept.append(ep)
            elif op(v, limit):
                kept.append(ep)
        if not kept and self.fallback:
            return list(endpoints)
        return kept
