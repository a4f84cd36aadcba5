"""header-profile-handler (Alpha): runs the one profile a request header names (headerName, default
EPP-Profile, matched case-insensitively; the value must equal a profile name exactly). With a single
profile configured it always runs; with several, a missing or blank header runs defaultProfile
(decode), and a value naming no configured profile runs none: the request is answered 429, as
upstream (the reason is logged)."""
from __future__ import annotations

import logging

from ...headers import PROFILE
from ..framework import ALPHA, ProfileHandler, need_str, register
from ..types import ProfileResult, SchedulingResult

log = logging.getLogger(__name__)


@register
class HeaderProfileHandler(ProfileHandler):
    type_name = "header-profile-handler"
    stability = ALPHA

    def __init__(self, name: str | None = None, headerName: str = "EPP-Profile", defaultProfile: str = "decode") -> None:
        super().__init__(name)
        t = self.type_name
        self.header = need_str(t, "headerName", headerName).strip().lower() or PROFILE
        self.default = need_str(t, "defaultProfile", defaultProfile) or "decode"

    def _wanted(self, request, profiles) -> str:
        if len(profiles) == 1:
            return next(iter(profiles))
        value = request.headers.get(self.header, "").strip()
        return value or self.default

    def pick_profiles(self, state, request, profiles, results):
        if results:
            return []
        wanted = self._wanted(request, profiles)
        prof = profiles.get(wanted)
        if prof is None:
            why = "is missing" if not request.headers.get(self.header, "").strip() else "names no configured profile"
            log.info("%s: request %s: header %s %s (%r); no profile runs", self.name, request.request_id, self.header,
                     why, wanted)
            return []
        return [prof]

    def process_results(self, state, request, results):
        if results:
            (name, _), = results.items()
            return SchedulingResult(profiles=results, primary=name)
        wanted = request.headers.get(self.header, "").strip() or self.default
        return SchedulingResult(profiles={wanted: ProfileResult([])}, primary=wanted)
