"""label-selector-filter (alias by-label-selector): keep endpoints whose labels match a Kubernetes
label selector: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist)."""
from __future__ import annotations

from ..framework import Filter, params_error, register

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def compile_selector(plugin: str, matchLabels: dict | None, matchExpressions: list | None):
    labels = matchLabels or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise params_error(plugin, "matchLabels must map label names to string values")
    exprs = []
    for i, e in enumerate(matchExpressions or []):
        if not isinstance(e, dict) or set(e) - {"key", "operator", "values"} or not isinstance(e.get("key"), str):
            raise params_error(plugin, f"matchExpressions[{i}] must be {{key, operator, values}}")
        op = e.get("operator")
        if op not in OPERATORS:
            raise params_error(plugin, f"matchExpressions[{i}].operator must be one of {list(OPERATORS)}, got {op!r}")
        values = e.get("values") or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise params_error(plugin, f"matchExpressions[{i}].values must be a list of strings")
        if op in ("In", "NotIn") and not values:
            raise params_error(plugin, f"matchExpressions[{i}]: operator {op} needs values")
        if op in ("Exists", "DoesNotExist") and values:
            raise params_error(plugin, f"matchExpressions[{i}]: operator {op} takes no values")
        exprs.append((e["key"], op, frozenset(values)))

    def matches(ep_labels: dict) -> bool:
        for k, v in labels.items():
            if ep_labels.get(k) != v:
                return False
        for key, op, values in exprs:
            present = key in ep_labels
            if op == "In" and not (present and ep_labels[key] in values):
                return False
            if op == "NotIn" and present and ep_labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True
    return matches


@register
class LabelSelectorFilter(Filter):
    type_name = "label-selector-filter"
    aliases = ("by-label-selector",)

    def __init__(self, name: str | None = None, matchLabels: dict | None = None,
                 matchExpressions: list | None = None) -> None:
        super().__init__(name)
        self.matches = compile_selector(self.type_name, matchLabels, matchExpressions)

    def filter(self, state, request, endpoints):
        m = self.matches
        return [ep for ep in endpoints if m(ep.labels)]
