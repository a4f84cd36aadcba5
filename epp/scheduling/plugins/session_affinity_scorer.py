"""session-affinity-scorer (Alpha): a soft preference for a client's session pod: 1 for it, 0 for every
other candidate (and 0 everywhere when there is no session). The strategies (encoded_endpoint_header,
the default, or session_id) and their parameters are described in _session_affinity.py."""
from __future__ import annotations

from ..framework import ALPHA, PreRequest, ResponseHeaders, Scorer, register
from ._session_affinity import STRATEGIES, SessionAffinity, endpoint_token  # noqa: F401 - re-exported

__all__ = ["SessionAffinityScorer", "STRATEGIES", "endpoint_token"]


@register
class SessionAffinityScorer(Scorer, PreRequest, ResponseHeaders):
    type_name = "session-affinity-scorer"
    stability = ALPHA
    bounded = True

    def __init__(self, name: str | None = None, strategy: str = "encoded_endpoint_header",
                 encodedEndpointHeaderConfig: dict | None = None, sessionIdConfig: dict | None = None,
                 profileName: str = "") -> None:
        super().__init__(name)
        self.session = SessionAffinity(self.type_name, strategy, encodedEndpointHeaderConfig, sessionIdConfig,
                                       profileName)

    def score(self, state, request, endpoints):
        target = self.session.chosen(request, endpoints)
        if target is None:
            return [0.0] * len(endpoints)
        return [1.0 if ep is target else 0.0 for ep in endpoints]

    def pre_request(self, state, request, result):
        self.session.bind(request, result)
        return None

    def response_headers(self, request, result, status):
        return self.session.response_headers(result)
