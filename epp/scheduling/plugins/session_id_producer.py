"""session-id-producer: publishes the request's session id (the request attribute "session-id", which
session affinity reads with sessionIdConfig.sources: [{attribute: session-id}]) from exactly one of a
request header (headerName) or a cookie of the Cookie header (cookieName). Nothing is published when
the source is absent or empty."""
from __future__ import annotations

from http.cookies import CookieError, SimpleCookie

from ..framework import Plugin, PrepareRequest, need_str, params_error, register
from ._session_affinity import SESSION_ATTR


@register
class SessionIDProducer(Plugin, PrepareRequest):
    type_name = "session-id-producer"

    def __init__(self, name: str | None = None, headerName: str = "", cookieName: str = "") -> None:
        super().__init__(name)
        t = self.type_name
        self.header = need_str(t, "headerName", headerName).strip().lower()
        self.cookie = need_str(t, "cookieName", cookieName).strip()
        if bool(self.header) == bool(self.cookie):
            raise params_error(t, "exactly one of headerName or cookieName must be set")

    def session_id(self, headers: dict[str, str]) -> str:
        if self.header:
            return headers.get(self.header, "").strip()
        raw = headers.get("cookie")
        if not raw:
            return ""
        jar = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            return ""
        morsel = jar.get(self.cookie)
        return morsel.value.strip() if morsel is not None else ""

    def prepare(self, request):
        """Runs before scheduling (no I/O): the id becomes a request attribute."""
        sid = self.session_id(request.headers)
        if sid:
            if request.attrs is None:
                request.attrs = {}
            request.attrs[SESSION_ATTR] = sid
        return None
