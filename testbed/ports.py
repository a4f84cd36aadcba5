"""Free loopback ports for the servers a test, the stack or a benchmark starts."""
from __future__ import annotations

import collections
import random
import socket

# Ports handed out recently, never handed out again: two servers started back to back each take a free
# port before either binds, and the kernel may offer the same one twice (seen: a P/D test's prefill and
# decode sims on one port, each answering half the requests).
_GIVEN: collections.deque = collections.deque(maxlen=4096)


def free_port() -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            break
    _GIVEN.append(port)
    return port


def free_listen_port() -> int:
    """A free port below the kernel's ephemeral range, for a listener that clients keep connecting to
    before it exists (a ZMQ SUB the pods' PUB sockets dial): a port inside that range can be picked as
    the dialer's own source port, and Linux then connects the socket to itself (TCP simultaneous open),
    which leaves that pod's publisher stuck on itself for good."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def free_range(n: int) -> int:
    """A first port such that n consecutive ports are free on 127.0.0.1 (a sim pool takes consecutive ports)."""
    for _ in range(200):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports found")
