"""pd-profile-handler: upstream's older P/D profile handler, deprecated there in favour of
disagg-profile-handler, which does the work here too. Its parameters: decodeProfile, prefillProfile,
deciderPluginName (default prefix-based-pd-decider: a plugin of that name must be configured),
prefixMatchInfoProducerName; primaryPort (data-parallel routing, not needed with Istio >= 1.28.1) is
checked and ignored; prefixPluginType / prefixPluginName were never used upstream either. The
`threshold` / `hashBlockSize` of its first versions became prefix-based-pd-decider's nonCachedTokens.
"""
from __future__ import annotations

import logging

from ..framework import need_int, need_str, params_error, register
from .disagg_profile_handler import DisaggProfileHandler

log = logging.getLogger(__name__)


@register
class PdProfileHandler(DisaggProfileHandler):
    type_name = "pd-profile-handler"
    replaced_by = "disagg-profile-handler"

    def __init__(self, name: str | None = None, decodeProfile: str = "decode", prefillProfile: str = "prefill",
                 deciderPluginName: str = "prefix-based-pd-decider", prefixMatchInfoProducerName: str = "",
                 primaryPort: int = 0, prefixPluginType: str = "", prefixPluginName: str = "",
                 threshold: int | None = None, hashBlockSize: int | None = None) -> None:
        t = self.type_name
        if threshold is not None or hashBlockSize is not None:
            raise params_error(t, "parameters threshold and hashBlockSize are gone upstream: configure a "
                                  "prefix-based-pd-decider with nonCachedTokens (tokens, not characters) and name it "
                                  "in deciderPluginName")
        if not need_str(t, "deciderPluginName", deciderPluginName):
            raise params_error(t, "decider plugin name is not defined (deciderPluginName)")
        port = need_int(t, "primaryPort", primaryPort, 0)
        if port > 65535:
            raise params_error(t, f"invalid primaryPort: must be between 1 and 65535, got {port}")
        super().__init__(name, profiles={"decode": need_str(t, "decodeProfile", decodeProfile),
                                         "prefill": need_str(t, "prefillProfile", prefillProfile)},
                         deciders={"prefill": deciderPluginName})
        self.producer_name = need_str(t, "prefixMatchInfoProducerName", prefixMatchInfoProducerName)
        log.warning("%s: pd-profile-handler is deprecated, use disagg-profile-handler", self.name)
        if port:
            log.warning("%s: primaryPort %d (data-parallel routing) is ignored: requests go to the picked "
                        "endpoint's own port", self.name, port)
