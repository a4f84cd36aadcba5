"""The configurations the pinned benchmark compares, each started on the proxy core in front of the
running backends (hack/bench/pinned.py):

    direct          wrk straight to one backend (no proxy)
    envoy           Envoy round robin over the two backends, no ext_proc
    epp             Envoy + epp, GIE's reference ext_proc setup: request and response bodies
                    FULL_DUPLEX_STREAMED, response headers SEND, trailers SEND
    epp-headers     the same with response_body_mode NONE and response trailers SKIP: epp sees the
                    response headers only
    epp-buffered    request body BUFFERED (Envoy holds the whole body, one message to epp); the response
                    side as `epp`
    sglang-ca, sglang-rr, vllm-router-ca    sglang-router cache_aware / round_robin, vllm-router
                    cache_aware (hack/bench/routers.py's peers: own venvs, installed on first use)

Envoy runs with --concurrency 1; epp with its default flags plus --endpoints-file and
--secure-serving=false (and the loopback ports testbed.epp gives it).
"""
from __future__ import annotations

import os
import subprocess
import types
import urllib.request

from testbed.endpoints import write_endpoints
from testbed.envoy import HEADERS_ONLY, bootstrap, start_envoy
from testbed.epp import start_epp
from testbed.ports import free_port

from . import routers

CONFIGS = ("direct", "envoy", "epp", "epp-headers", "epp-buffered", "sglang-ca", "sglang-rr", "vllm-router-ca")
PEERS = {"sglang-ca": "sglang-cache-aware", "sglang-rr": "sglang-rr", "vllm-router-ca": "vllm-router-cache-aware"}
EXT_PROC = {  # configuration -> (the listener's request body mode, response_body_mode)
    "epp": ("FULL_DUPLEX_STREAMED", "FULL_DUPLEX_STREAMED"),
    "epp-headers": ("FULL_DUPLEX_STREAMED", HEADERS_ONLY),
    "epp-buffered": ("BUFFERED", "FULL_DUPLEX_STREAMED"),
}
Unavailable = routers.Unavailable


class Proxy:
    """A started configuration: where wrk sends, the process groups whose CPU is measured (label -> pgid),
    Envoy's admin port and listener name (its ext_proc counters), what was started."""

    def __init__(self, name: str, port: int, groups: dict[str, int], procs: list[subprocess.Popen],
                 admin: int | None = None, listener: str | None = None, info: dict | None = None) -> None:
        self.name, self.port, self.groups, self.procs = name, port, groups, procs
        self.admin, self.listener, self.info = admin, listener, info or {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ext_proc_messages(self) -> dict[str, int] | None:
        """Envoy's ext_proc message counters so far: {"sent": to epp, "received": from epp}; None without
        ext_proc."""
        if self.admin is None or not self.groups.get("epp"):
            return None
        prefix = f"http.{self.listener}.ext_proc.stream_msgs_"
        out = {"sent": 0, "received": 0}
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/stats?filter=^{prefix}", timeout=5) as r:
            for line in r.read().decode().splitlines():
                k, _, v = line.partition(":")
                if k.strip().startswith(prefix) and k.strip()[len(prefix):] in out:
                    out[k.strip()[len(prefix):]] = int(v)
        return out


def start(kids, name: str, backends: list[int], pin: list[str], install: bool, tag: str = "") -> Proxy:
    """Starts configuration `name` (its processes wrapped in `pin`) over the backend ports."""
    addresses = [f"127.0.0.1:{p}" for p in backends]
    label = f"{name}{tag}"
    if name == "direct":
        return Proxy(name, backends[0], {}, [])
    if name in PEERS:
        run = routers.start_peer(kids, PEERS[name], types.SimpleNamespace(addresses=addresses), install, wrap=pin)
        p = next(q for _, q in kids.procs if q.pid == run.pids["router"])
        return Proxy(name, int(run.url.rsplit(":", 1)[1]), {"router": p.pid}, [p], info=dict(run.info))
    port, admin = free_port(), free_port()
    if name == "envoy":
        cfg = routers.widen_direct(bootstrap(admin, {"direct": port}, direct_backend=backends[0]), addresses)
        env = start_envoy(kids, f"{label}-envoy", cfg, [port], 1, wrap=pin)
        return Proxy(name, port, {"envoy": env.pid}, [env], admin, "direct", {"lb": "ROUND_ROBIN"})
    if name not in EXT_PROC:
        raise ValueError(f"unknown configuration {name!r}; known: {', '.join(CONFIGS)}")
    mode, response_body = EXT_PROC[name]
    efile = os.path.join(kids.logdir, f"endpoints-{label}.yaml")
    write_endpoints(efile, backends)
    grpc = free_port()
    epp = start_epp(kids, efile, grpc, name=f"{label}-epp", wrap=pin)
    cfg = bootstrap(admin, {mode: port}, epp_port=grpc, response_body=response_body)
    env = start_envoy(kids, f"{label}-envoy", cfg, [port], 1, wrap=pin)
    return Proxy(name, port, {"envoy": env.pid, "epp": epp.pid}, [epp, env], admin, mode,
                 {"request_body_mode": mode, "response_body_mode": response_body})


def stop(kids, proxy: Proxy) -> None:
    for p in reversed(proxy.procs):
        kids.stop(p)
