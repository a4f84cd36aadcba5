"""session-affinity-scorer: keeps a client's session on one endpoint.

strategy encoded_endpoint_header (default): the response carries a header (x-session-token) naming
the endpoint that served it, base64 of "<namespace>/<name>"; a request that sends it back scores 1
on that endpoint and 0 elsewhere. A missing or undecodable token scores 0 everywhere (no opinion).
strategy session_id: the client sends its own session id (header x-session-id by default); the EPP
remembers which endpoint served it for evictionTtlSeconds and nothing is added to the response.
profileName: record the pick of that profile instead of the primary one.
"""
from __future__ import annotations

import base64
import binascii
import time

from ..framework import ResponseHeaders, Scorer, need_int, need_str, params_error, register

STRATEGIES = ("encoded_endpoint_header", "session_id")


def endpoint_token(ep) -> str:
    return base64.b64encode(f"{ep.namespace}/{ep.name}".encode()).decode()


@register
class SessionAffinityScorer(Scorer, ResponseHeaders):
    type_name = "session-affinity-scorer"
    bounded = True

    def __init__(self, name: str | None = None, strategy: str = "encoded_endpoint_header",
                 encodedEndpointHeaderConfig: dict | None = None, sessionIdConfig: dict | None = None,
                 profileName: str = "") -> None:
        super().__init__(name)
        t = self.type_name
        self.strategy = need_str(t, "strategy", strategy, STRATEGIES)
        enc = encodedEndpointHeaderConfig or {}
        if not isinstance(enc, dict) or set(enc) - {"header"}:
            raise params_error(t, "encodedEndpointHeaderConfig takes only {header}")
        self.header = need_str(t, "encodedEndpointHeaderConfig.header", enc.get("header", "x-session-token")).lower()
        sid = sessionIdConfig or {}
        if not isinstance(sid, dict) or set(sid) - {"sources", "evictionTtlSeconds", "evictionSweepSeconds"}:
            raise params_error(t, "sessionIdConfig takes sources, evictionTtlSeconds, evictionSweepSeconds")
        self.sid_headers = []
        for src in sid.get("sources") or [{"header": "x-session-id"}]:
            if not isinstance(src, dict) or "header" not in src:
                raise params_error(t, "sessionIdConfig.sources entries must name a header")
            self.sid_headers.append(need_str(t, "sessionIdConfig.sources.header", src["header"]).lower())
        self.ttl = need_int(t, "sessionIdConfig.evictionTtlSeconds", sid.get("evictionTtlSeconds", 300), 1)
        self.profile = profileName
        self._sessions: dict[str, tuple[str, float]] = {}   # session id -> (address, expiry)
        self._next_sweep = 0.0

    def _session_id(self, request) -> str | None:
        for h in self.sid_headers:
            v = request.headers.get(h)
            if v:
                return v
        return None

    def score(self, state, request, endpoints):
        if self.strategy == "session_id":
            sid = self._session_id(request)
            entry = self._sessions.get(sid) if sid else None
            if entry is None or entry[1] < time.monotonic():
                return [0.0] * len(endpoints)
            return [1.0 if ep.address == entry[0] else 0.0 for ep in endpoints]
        token = request.headers.get(self.header)
        if not token:
            return [0.0] * len(endpoints)
        try:
            wanted = base64.b64decode(token, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return [0.0] * len(endpoints)
        return [1.0 if f"{ep.namespace}/{ep.name}" == wanted else 0.0 for ep in endpoints]

    def _chosen(self, result):
        if self.profile:
            pr = result.profiles.get(self.profile)
            return pr.targets[0] if pr is not None and pr.targets else None
        return result.targets[0] if result.targets else None

    def response_headers(self, request, result, status):
        ep = self._chosen(result)
        if ep is None:
            return None
        if self.strategy == "session_id":
            sid = self._session_id(request)
            if sid:
                now = time.monotonic()
                self._sessions[sid] = (ep.address, now + self.ttl)
                if now >= self._next_sweep:
                    self._next_sweep = now + 10.0
                    for k in [k for k, (_, exp) in self._sessions.items() if exp < now]:
                        del self._sessions[k]
            return None
        return [(self.header, endpoint_token(ep))]
