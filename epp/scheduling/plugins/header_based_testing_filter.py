"""header-based-testing-filter (conformance): keeps the candidates the request header
test-epp-endpoint-selection lists, in its order: a comma list of IPs (any port) or ip:port (that
endpoint), IPv6 bracketed or not; one endpoint per IP at most. A missing or blank header keeps none."""
from __future__ import annotations

from ...headers import TEST_ENDPOINT_SELECTION
from ..framework import Filter, register


def _split(item: str) -> tuple[str, str]:
    """(host, port) of "ip:port", "[v6]:port", a bare IPv4 or a bare (bracketed or not) IPv6."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if item.count(":") == 1:
        host, port = item.split(":")
        return host, port
    return item, ""


@register
class HeaderBasedTestingFilter(Filter):
    type_name = "header-based-testing-filter"

    def filter(self, state, request, endpoints):
        value = request.headers.get(TEST_ENDPOINT_SELECTION, "")
        if not value.strip():
            return []
        by_ip, by_address = {}, {}
        for ep in endpoints:
            ip = ep.ip
            by_ip.setdefault(ip, ep)
            by_address[f"{ip}:{ep.address.rsplit(':', 1)[1]}"] = ep
        out, seen = [], set()
        for raw in value.split(","):
            item = raw.strip()
            if not item:
                continue
            host, port = _split(item)
            ep = by_address.get(f"{host}:{port}") if port else by_ip.get(host)
            if ep is not None and ep.ip not in seen:
                seen.add(ep.ip)
                out.append(ep)
        return out
