"""by-label (deprecated upstream, still in configs): keep endpoints whose `label` has one of
validValues; allowsNoLabel lets endpoints without the label through."""
from __future__ import annotations

from ..framework import Filter, need_bool, need_str, params_error, register


@register
class ByLabelFilter(Filter):
    type_name = "by-label"
    replaced_by = "label-selector-filter"

    def __init__(self, name: str | None = None, label: str = "", validValues: list | None = None,
                 allowsNoLabel: bool = False) -> None:
        super().__init__(name)
        self.label = need_str(self.type_name, "label", label)
        if not label:
            raise params_error(self.type_name, "parameter label is required")
        values = validValues or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise params_error(self.type_name, "validValues must be a list of strings")
        self.values = frozenset(values)
        self.allow_missing = need_bool(self.type_name, "allowsNoLabel", allowsNoLabel)

    def filter(self, state, request, endpoints):
        out = []
        for ep in endpoints:
            v = ep.labels.get(self.label)
            if (v is None and self.allow_missing) or (v is not None and v in self.values):
                out.append(ep)
        return out
