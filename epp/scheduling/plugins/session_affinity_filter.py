"""session-affinity-filter (Alpha): a hard pin to a client's session pod: when that pod is among the
candidates it is the only one kept; with no session, or its pod gone, every candidate stays (never
empty). Strategies and parameters as session-affinity-scorer's (see _session_affinity.py); with
session_id, a session whose pod is gone rebinds to where this request goes."""
from __future__ import annotations

from ..framework import ALPHA, Filter, PreRequest, ResponseHeaders, register
from ._session_affinity import SessionAffinity


@register
class SessionAffinityFilter(Filter, PreRequest, ResponseHeaders):
    type_name = "session-affinity-filter"
    stability = ALPHA

    def __init__(self, name: str | None = None, strategy: str = "encoded_endpoint_header",
                 encodedEndpointHeaderConfig: dict | None = None, sessionIdConfig: dict | None = None,
                 profileName: str = "") -> None:
        super().__init__(name)
        self.session = SessionAffinity(self.type_name, strategy, encodedEndpointHeaderConfig, sessionIdConfig,
                                       profileName)

    def filter(self, state, request, endpoints):
        target = self.session.chosen(request, endpoints)
        return [target] if target is not None else list(endpoints)

    def pre_request(self, state, request, result):
        self.session.bind(request, result)
        return None

    def response_headers(self, request, result, status):
        return self.session.response_headers(result)
