"""header-label-affinity-scorer (Alpha): a soft preference for endpoints whose label labelKey equals
the request header headerName: 1 for those, 0 for the rest (all stay eligible). One instance per
header-to-label mapping, each with its own weight."""
from __future__ import annotations

from ..framework import ALPHA, Scorer, need_str, params_error, register


@register
class HeaderLabelAffinityScorer(Scorer):
    type_name = "header-label-affinity-scorer"
    stability = ALPHA
    bounded = True

    def __init__(self, name: str | None = None, headerName: str = "", labelKey: str = "") -> None:
        super().__init__(name)
        t = self.type_name
        self.header = need_str(t, "headerName", headerName).strip().lower()
        self.label = need_str(t, "labelKey", labelKey).strip()
        if not self.header or not self.label:
            raise params_error(t, "headerName and labelKey are required")

    def score(self, state, request, endpoints):
        want = request.headers.get(self.header)
        if not want:
            return [0.0] * len(endpoints)
        label = self.label
        return [1.0 if ep.labels.get(label) == want else 0.0 for ep in endpoints]
