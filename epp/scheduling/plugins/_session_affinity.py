"""What session-affinity-scorer and -filter share: which candidate is a request's session pod, and how
the session is remembered.

encoded_endpoint_header (default): stateless. The response carries a header (x-session-token)
holding base64 of the serving pod's "namespace/name"; a request that sends it back names its pod.
session_id: stateful. The session id comes from the first non-empty source (a request header, or a
request attribute another plugin published, e.g. session-id-producer's); when the request is sent,
the id is bound to the pick for evictionTtlSeconds after its last use. A binding whose pod was no
longer a candidate moves to the new pick; otherwise it stays. Nothing is written back.
profileName: remember that profile's pick instead of the primary one.
"""
from __future__ import annotations

import base64
import binascii
import time

from ...headers import SESSION_ID, SESSION_TOKEN
from ..framework import need_number, need_str, params_error

STRATEGIES = ("encoded_endpoint_header", "session_id")
SESSION_ATTR = "session-id"   # the request attribute session-id-producer publishes


def endpoint_token(ep) -> str:
    return base64.b64encode(f"{ep.namespace}/{ep.name}".encode()).decode()


class SessionAffinity:
    def __init__(self, plugin: str, strategy: str, encoded: dict | None, session_id: dict | None,
                 profile: str) -> None:
        t = plugin
        self.strategy = need_str(t, "strategy", strategy or "encoded_endpoint_header", STRATEGIES)
        enc = encoded or {}
        if not isinstance(enc, dict) or set(enc) - {"header"}:
            raise params_error(t, "encodedEndpointHeaderConfig takes only {header}")
        self.header = (need_str(t, "encodedEndpointHeaderConfig.header", enc.get("header") or SESSION_TOKEN)
                       .strip().lower() or SESSION_TOKEN)
        sid = session_id or {}
        if not isinstance(sid, dict) or set(sid) - {"sources", "evictionTtlSeconds", "evictionSweepSeconds"}:
            raise params_error(t, "sessionIdConfig takes sources, evictionTtlSeconds, evictionSweepSeconds")
        self.sources: list[tuple[str, str]] = []     # ("header", name) or ("attribute", key)
        for i, src in enumerate(sid.get("sources") or [{"header": SESSION_ID}]):
            if not isinstance(src, dict) or set(src) - {"header", "attribute"}:
                raise params_error(t, f"sessionIdConfig.sources[{i}] takes header or attribute")
            header, attr = src.get("header") or "", src.get("attribute") or ""
            if bool(header) == bool(attr):
                raise params_error(t, f"sessionIdConfig.sources[{i}]: exactly one of header or attribute must be set")
            self.sources.append(("header", need_str(t, "header", header).strip().lower()) if header
                                else ("attribute", need_str(t, "attribute", attr)))
        self.ttl = need_number(t, "sessionIdConfig.evictionTtlSeconds", sid.get("evictionTtlSeconds") or 300)
        self.sweep = need_number(t, "sessionIdConfig.evictionSweepSeconds", sid.get("evictionSweepSeconds") or 10)
        if self.ttl <= 0 or self.sweep <= 0:
            raise params_error(t, "evictionTtlSeconds and evictionSweepSeconds must be > 0")
        self.profile = profile
        self._bindings: dict[str, list] = {}   # session id -> [address, last seen]
        self._next_sweep = 0.0

    # ---------------------------------------------------------------- request side

    def session_id(self, request) -> str:
        for kind, key in self.sources:
            if kind == "header":
                v = request.headers.get(key)
            else:
                v = request.attrs.get(key) if request.attrs else None
                v = v if isinstance(v, str) else None
            if v and v.strip():
                return v.strip()
        return ""

    def chosen(self, request, endpoints):
        """The candidate that is the request's session pod, else None."""
        if self.strategy == "session_id":
            sid = self.session_id(request)
            if not sid:
                return None
            bound = self._bindings.get(sid)
            if bound is None or time.monotonic() - bound[1] > self.ttl:
                return None
            target = next((ep for ep in endpoints if ep.address == bound[0]), None)
            # remember whether the bound pod was there: only then may the binding move
            if request.attrs is None:
                request.attrs = {}
            request.attrs[self._absent_key] = target is None
            return target
        token = request.headers.get(self.header)
        if not token:
            return None
        try:
            wanted = base64.b64decode(token, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        return next((ep for ep in endpoints if f"{ep.namespace}/{ep.name}" == wanted), None)

    @property
    def _absent_key(self) -> str:
        return f"session-affinity/{id(self)}/absent"

    def _pick(self, result):
        pr = result.profiles.get(self.profile) if self.profile else result.profiles.get(result.primary)
        return pr.targets[0] if pr is not None and pr.targets else None

    # ---------------------------------------------------------------- remembering

    def bind(self, request, result) -> None:
        """session_id: bind the session to the pick when the request is sent."""
        if self.strategy != "session_id":
            return
        sid = self.session_id(request)
        ep = self._pick(result) if sid else None
        if ep is None:
            return
        now = time.monotonic()
        bound = self._bindings.get(sid)
        if bound is None or now - bound[1] > self.ttl:
            self._bindings[sid] = [ep.address, now]
        elif bound[0] == ep.address:
            bound[1] = now
        elif request.attrs and request.attrs.get(self._absent_key):
            self._bindings[sid] = [ep.address, now]     # the bound pod was gone: the session moves
        if now >= self._next_sweep:
            self._next_sweep = now + self.sweep
            for k in [k for k, (_, seen) in self._bindings.items() if now - seen > self.ttl]:
                del self._bindings[k]

    def response_headers(self, result) -> list[tuple[str, str]] | None:
        """encoded_endpoint_header: the pick's token on the response."""
        if self.strategy != "encoded_endpoint_header":
            return None
        ep = self._pick(result)
        return [(self.header, endpoint_token(ep))] if ep is not None else None
