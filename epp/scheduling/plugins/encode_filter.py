"""encode-filter: endpoints labelled for the multimodal encode phase."""
from __future__ import annotations

from ..framework import Filter, register
from ._roles import ENCODE_ROLES, ROLE_LABEL


@register
class EncodeFilter(Filter):
    type_name = "encode-filter"

    def filter(self, state, request, endpoints):
        return [ep for ep in endpoints if ep.labels.get(ROLE_LABEL) in ENCODE_ROLES]
