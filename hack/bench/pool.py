"""The simulated pool of a scenario (vllm_sim.pool), restarted for every router so each one starts on
cold, identical caches, and the counters every stage reads from the sims' /metrics."""
from __future__ import annotations

import json
import os
import sys

import aiohttp

from testbed.children import Children
from testbed.ports import free_listen_port, free_range
from testbed.wait import wait_file

from epp.scheduling.plugins._roles import PREFILL_ROLES
from testbed.scenario import Pool as PoolSpec, engine_flags

PY = sys.executable

# counters summed per pod (prometheus_client adds _total to counters)
COUNTERS = {
    "hits": "vllm:prefix_cache_hits_total", "queries": "vllm:prefix_cache_queries_total",
    "prompt_tokens": "vllm:prompt_tokens_total", "generation_tokens": "vllm:generation_tokens_total",
    "preemptions": "vllm:num_preemptions_total", "requests": "vllm:e2e_request_latency_seconds_count",
    "ttft_sum": "vllm:time_to_first_token_seconds_sum", "ttft_count": "vllm:time_to_first_token_seconds_count",
    "queue_sum": "vllm:request_queue_time_seconds_sum", "queue_count": "vllm:request_queue_time_seconds_count",
}
GAUGES = {"waiting": "vllm:num_requests_waiting", "running": "vllm:num_requests_running",
          "kv_usage": "vllm:kv_cache_usage_perc"}


class PoolHandle:
    def __init__(self, spec: PoolSpec, proc, addresses: list[str], endpoints_file: str, kv_port: int,
                 kv_ports: list[int] | None = None) -> None:
        self.spec, self.proc, self.addresses = spec, proc, addresses
        self.endpoints_file, self.kv_port = endpoints_file, kv_port
        self.kv_ports = kv_ports or [kv_port]     # one per router replica: every pod publishes to each
        self.model, self.block_size = spec.model, spec.block_size

    def sim_pids(self) -> list[int]:
        """The sims are children of the pool launcher."""
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                            out.append(int(d))
                except (OSError, ValueError, IndexError):
                    pass
        return out


def sim_flags(spec: PoolSpec, kv_port: int, more_kv_ports: list[int] = ()) -> list[str]:
    args = ["--time-scale", str(spec.time_scale)]
    if spec.kv_events:
        args += ["--kv-events-config", json.dumps({
            "enable_kv_cache_events": True, "publisher": "zmq",
            "endpoint": ",".join(f"tcp://127.0.0.1:{p}" for p in (kv_port, *more_kv_ports)),
            "topic": "kv@127.0.0.1:{port}@" + spec.model})]
    return args + engine_flags(spec)


def start(kids: Children, spec: PoolSpec, name: str, timeout: float = 90.0, kv_endpoints: int = 1,
          respawn: bool = False) -> PoolHandle:
    """kv_endpoints: addresses every pod publishes KV events to (one per epp replica); respawn: the pool
    restarts a sim that dies (the churn scenario kills one)."""
    if PREFILL_ROLES.intersection(r.strip() for r in spec.roles.split(",")):   # P/D: decode sims behind epp-sidecar
        from . import pd_pool
        return pd_pool.start(kids, spec, name, timeout, PoolHandle, sim_flags)
    base, kv_port = free_range(spec.count), free_listen_port()
    more = [free_listen_port() for _ in range(kv_endpoints - 1)]
    pool_flags = (["--profiles", ",".join(spec.profiles)] if spec.profiles else []) + (["--respawn"] if respawn else [])
    efile = os.path.join(kids.logdir, f"{name}-endpoints.yaml")
    if os.path.exists(efile):
        os.remove(efile)
    p = kids.start(f"{name}-pool", [PY, "-m", "vllm_sim.pool", "--count", str(spec.count), "--base-port", str(base),
                                    "--roles", spec.roles, "--endpoints-file", efile, *pool_flags,
                                    "--startup-timeout", str(timeout), "--", *sim_flags(spec, kv_port, more)])
    # written once every sim answers /health
    wait_file(efile, timeout + 5, p, f"the sim pool (log: {kids.log(name + '-pool')})", every=0.1)
    return PoolHandle(spec, p, [f"127.0.0.1:{base + i}" for i in range(spec.count)], efile, kv_port, [kv_port, *more])


def _parse(text: str) -> dict[str, float]:
    want = {**{v: k for k, v in COUNTERS.items()}, **{v: k for k, v in GAUGES.items()}}
    out = {k: 0.0 for k in (*COUNTERS, *GAUGES)}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        name = line[:brace] if brace >= 0 else line.split(" ", 1)[0]
        key = want.get(name)
        if key:
            out[key] += float(line.rsplit(" ", 1)[1])
    return out


async def scrape(http: aiohttp.ClientSession, addresses: list[str]) -> list[dict[str, float]]:
    """Every pod's counters (a pod that does not answer gives NaNs: its deltas are unknown)."""
    out = []
    for a in addresses:
        try:
            async with http.get(f"http://{a}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r:
                out.append(_parse(await r.text()))
        except (aiohttp.ClientError, OSError, TimeoutError):
            out.append({k: float("nan") for k in (*COUNTERS, *GAUGES)})
    return out


async def render_calls(http: aiohttp.ClientSession, addresses: list[str]) -> int:
    """Calls of the sims' renderer API (a tokenizing router calls it per request)."""
    n = 0
    for a in addresses:
        try:
            async with http.get(f"http://{a}/debug/engine", timeout=aiohttp.ClientTimeout(total=10)) as r:
                n += (await r.json()).get("render_calls", 0)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            pass
    return n
