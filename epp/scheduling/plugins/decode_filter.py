"""decode-filter: endpoints that can decode. An unlabeled endpoint is a plain aggregated server: it
decodes."""
from __future__ import annotations

from ..framework import Filter, register
from ._roles import DECODE_ROLES, ROLE_LABEL


@register
class DecodeFilter(Filter):
    type_name = "decode-filter"

    def filter(self, state, request, endpoints):
        return [ep for ep in endpoints if ep.labels.get(ROLE_LABEL, "decode") in DECODE_ROLES]
