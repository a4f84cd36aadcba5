"""Parsing of `ip:port` endpoint addresses (IPv6 as `[::1]:8000`)."""
from __future__ import annotations

import ipaddress


def parse_address(text: str) -> tuple[str, int]:
    """Returns (ip, port); raises ValueError with a message that says what is wrong."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"address must be a non-empty string 'ip:port', got {text!r}")
    host, sep, port_s = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"address {text!r} is not 'ip:port'")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"address {text!r}: unbalanced brackets")
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"address {text!r}: {host!r} is not an IP address (the proxy routes by IP)") from None
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"address {text!r}: port must be 1-65535")
    return str(ip), int(port_s)


def host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets (as URLs and Envoy want it)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def canonical(text: str) -> str:
    return host_port(*parse_address(text))
