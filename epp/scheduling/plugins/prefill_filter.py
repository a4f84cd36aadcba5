"""prefill-filter: endpoints labelled for prefill (an unlabeled endpoint is not a prefill pod)."""
from __future__ import annotations

from ..framework import Filter, register
from ._roles import PREFILL_ROLES, ROLE_LABEL


@register
class PrefillFilter(Filter):
    type_name = "prefill-filter"

    def filter(self, state, request, endpoints):
        return [ep for ep in endpoints if ep.labels.get(ROLE_LABEL) in PREFILL_ROLES]
