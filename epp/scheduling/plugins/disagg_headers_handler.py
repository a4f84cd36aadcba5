"""disagg-headers-handler (older name prefill-header-handler): upstream's deprecated pre-request plugin
that sets `x-prefiller-host-port` from the prefill profile's pick. disagg-profile-handler sets it
itself, so beside one (or pd-profile-handler) this plugin does nothing; it still works beside any
other profile handler that runs a profile named prefillProfile."""
from __future__ import annotations

import logging

from ..framework import BindsPlugins, Plugin, PreRequest, need_str, register
from ._disagg import PREFILL_HEADER, prefill_header
from .disagg_profile_handler import DisaggProfileHandler

log = logging.getLogger(__name__)


@register
class DisaggHeadersHandler(Plugin, PreRequest, BindsPlugins):
    type_name = "disagg-headers-handler"
    replaced_by = "disagg-profile-handler"
    aliases = ("prefill-header-handler",)

    def __init__(self, name: str | None = None, prefillProfile: str = "prefill", encodeProfile: str = "encode") -> None:
        super().__init__(name)
        self.prefill = need_str(self.type_name, "prefillProfile", prefillProfile)
        need_str(self.type_name, "encodeProfile", encodeProfile)
        self.active = True

    def bind(self, plugins: dict) -> None:
        self.active = not any(isinstance(p, DisaggProfileHandler) for p in plugins.values())
        log.warning("%s: %s is deprecated; disagg-profile-handler sets %s itself%s", self.name, self.type_name,
                    PREFILL_HEADER, " (this plugin does nothing beside it)" if not self.active else "")

    def pre_request(self, state, request, result):
        if not self.active:
            return None
        return prefill_header(result, self.prefill)
