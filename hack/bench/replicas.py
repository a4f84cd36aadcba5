"""A router as N replicas behind one Envoy, each replica seeing 1/N of the requests (active-active HA):
the two-replicas scenario.

- epp: N epp processes on the same endpoints file, each with its own state (prefix index, in-flight
  counts, latency model); Envoy's ext_proc cluster lists all N and balances the streams round robin, so
  consecutive requests of one prefix meet different replicas. A precise config gets one KV-events
  address per replica and every pod publishes to each.
- sglang-router / vllm-router: N processes, Envoy ROUND_ROBIN in front of them (the same extra hop
  epp has).
- envoy-rr has no state to split: one Envoy as usual.
"""
from __future__ import annotations

import os

from testbed.children import Children
from testbed.envoy import bootstrap
from testbed.epp import start_epp
from testbed.ports import free_port
from testbed.wait import wait_port

from . import ROOT
from .routers import (PEERS, Running, epp_config, round_robin_bootstrap, start as start_one, start_envoy, start_peer)


def spread_ext_proc(cfg: dict, grpc_ports: list[int]) -> dict:
    """testbed.envoy's `epp` cluster (one ext_proc server) widened to every replica, round robin."""
    cluster = next(c for c in cfg["static_resources"]["clusters"] if c["name"] == "epp")
    cluster["lb_policy"] = "ROUND_ROBIN"
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}} for p in grpc_ports]
    return cfg


def start_replicas(kids: Children, name: str, pool, install: bool, envoy_concurrency: int, n: int) -> Running:
    if name == "envoy-rr":
        return start_one(kids, name, pool, install, envoy_concurrency)
    port = free_port()
    if name in PEERS:
        peers = [start_peer(kids, name, pool, install, label=f"{name}-{i + 1}") for i in range(n)]
        urls = [r.url.split("//", 1)[1] for r in peers]
        env = start_envoy(kids, name, round_robin_bootstrap(port, urls), port, envoy_concurrency)
        pids = {f"router-{i + 1}": r.pids["router"] for i, r in enumerate(peers)}
        return Running(name, f"http://127.0.0.1:{port}", {**pids, "envoy": env.pid},
                       {**peers[0].info, "replicas": n, "front": "Envoy ROUND_ROBIN"})
    ts = pool.spec.time_scale
    grpcs, mports, pids, cfgs = [], [], {}, []
    for i in range(n):
        kv = pool.kv_ports[i] if i < len(pool.kv_ports) else None
        cfg = epp_config(name, pool, kids.logdir, kv_port=kv, suffix=f"-{i + 1}")
        grpc, mport = free_port(), free_port()
        epp = start_epp(kids, pool.endpoints_file, grpc, f"{50 / ts:.0f}ms",
                        extra=["--metrics-port", str(mport), "--config-file", cfg,
                               "--metrics-staleness-threshold", f"{2000 / ts:.0f}ms"], name=f"{name}-epp-{i + 1}")
        wait_port(mport, 30, epp, "epp metrics")
        grpcs.append(grpc)
        mports.append(mport)
        pids[f"epp-{i + 1}"] = epp.pid
        cfgs.append(os.path.relpath(cfg, ROOT) if cfg.startswith(ROOT) else cfg)
    cfg = spread_ext_proc(bootstrap(free_port(), {"FULL_DUPLEX_STREAMED": port}, epp_port=grpcs[0]), grpcs)
    env = start_envoy(kids, name, cfg, port, envoy_concurrency)
    return Running(name, f"http://127.0.0.1:{port}", {"envoy": env.pid, **pids},
                   {"config": cfgs[0], "replicas": n}, epp_metrics=mports[0], epp_metrics_all=mports)
