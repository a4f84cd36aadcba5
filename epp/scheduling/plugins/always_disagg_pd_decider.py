"""always-disagg-pd-decider: every request gets a separate prefill (when a prefill pod is available)."""
from __future__ import annotations

from ..framework import register
from ._disagg import ALWAYS, PDDecider


@register
class AlwaysDisaggPDDecider(PDDecider):
    type_name = "always-disagg-pd-decider"

    def decide(self, state, request, endpoint):
        return True, ALWAYS, "always-disagg-pd-decider"
