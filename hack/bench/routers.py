"""The routers a scenario compares, each started in front of an already running pool.

    envoy-rr                  Envoy round robin over the pods (no EPP)
    epp-random, epp-load-only, epp-approx, epp-prefix-heavy, epp-precise, epp-sticky
                              Envoy (ext_proc FULL_DUPLEX_STREAMED) + epp with config/<...>.yaml
                              (epp-sticky: llm-d's "sticky until saturated", config/sticky.yaml)
    epp-flow                  epp with flow control (hack/bench/configs/noisy-neighbor-flow.yaml)
    epp-approx-pw             the approximate scorer with precise.yaml's weights (a control)
    epp-latency, epp-latency-precise   the predicted-latency scorer (ours) on approximate / precise prefixes
    epp-latency-affinity      the same with upstream's prefix scorer beside it (ours)
    epp:PATH                  Envoy + epp with any EndpointPickerConfig file
    sglang-cache-aware, sglang-rr                     sglang-router (PyPI `sglang-router`)
    vllm-router-cache-aware, vllm-router-rr           vllm-router (PyPI `vllm-router`)

Peers are installed on first use into their own venvs under out/bench-venvs/ with pip, and always bind
127.0.0.1 (checked after start: a peer found listening on another address is stopped and reported).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import yaml

from testbed.children import Children
from testbed.envoy import bootstrap, find_envoy, start_envoy as _start_envoy
from testbed.epp import start_epp
from testbed.ports import free_port
from testbed.scenario import ROUTER_CONFIGS
from testbed.wait import wait_port

from . import ROOT

PY = sys.executable
VENVS = os.path.join(ROOT, "out", "bench-venvs")
CONFIGS = ROUTER_CONFIGS
PEERS = {  # name -> (PyPI package, policy)
    "sglang-cache-aware": ("sglang-router", "cache_aware"), "sglang-rr": ("sglang-router", "round_robin"),
    "vllm-router-cache-aware": ("vllm-router", "cache_aware"), "vllm-router-rr": ("vllm-router", "round_robin"),
}
KNOWN = ["envoy-rr", *CONFIGS, *PEERS]


class Unavailable(Exception):
    """The router cannot run here (not installable, no binary): its rows say why instead of failing the run."""


class Running:
    def __init__(self, name: str, url: str, pids: dict[str, int], info: dict, epp_metrics: int | None = None,
                 epp_metrics_all: list[int] | None = None):
        self.name, self.url, self.pids, self.info, self.epp_metrics = name, url, pids, info, epp_metrics
        # every epp replica's metrics port (one unless the scenario runs replicas)
        self.epp_metrics_all = epp_metrics_all or ([epp_metrics] if epp_metrics else [])


def file_label(name: str) -> str:
    """A router's name as it appears in log and file names (epp:PATH names carry a path)."""
    return name.replace("/", "_")


def check(name: str) -> None:
    if name not in KNOWN and not name.startswith("epp:"):
        raise ValueError(f"unknown router {name!r}; known: {', '.join(KNOWN)}, or epp:PATH")


def needs_kv_events(name: str) -> bool:
    """The router's epp config declares a precise-prefix-cache plugin (so the run waits for every pod's KV
    events first). Read from the plugin types, not the text: a comment naming precise-kv is no subscriber."""
    path = config_path(name)
    if path is None:
        return False
    try:
        doc = yaml.safe_load(_config_text(path)) or {}
    except yaml.YAMLError:
        return False
    plugins = doc.get("plugins") if isinstance(doc, dict) else None
    if not isinstance(plugins, list):
        return False
    return any(isinstance(p, dict) and "precise-prefix-cache" in str(p.get("type", "")) for p in plugins)


def config_path(name: str) -> str | None:
    """The epp config file a router runs (epp:PATH or a named config); None for the other routers."""
    if name.startswith("epp:"):
        return name[4:]
    return os.path.join(ROOT, CONFIGS[name]) if name in CONFIGS else None


def _config_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


# ------------------------------------------------------------------ Envoy

def _long_requests(cfg: dict) -> dict:
    """A stage under overload holds streams for minutes of wall time: no route timeout."""
    for lst in cfg["static_resources"]["listeners"]:
        for fc in lst["filter_chains"]:
            for flt in fc["filters"]:
                for vh in flt["typed_config"]["route_config"]["virtual_hosts"]:
                    for r in vh["routes"]:
                        r["route"]["timeout"] = "0s"
    return cfg


def _wide_clusters(cfg: dict) -> dict:
    """Envoy's circuit breakers default to 1,024 requests per cluster: an overload stage (thousands waiting
    in a router or in the pods' queues) would otherwise be shed by Envoy itself, not by what is measured."""
    for c in cfg["static_resources"]["clusters"]:
        c["circuit_breakers"] = {"thresholds": [{"max_connections": 100000, "max_pending_requests": 100000,
                                                 "max_requests": 100000}]}
    return cfg


def start_envoy(kids: Children, name: str, cfg: dict, port: int, concurrency: int) -> subprocess.Popen:
    try:
        find_envoy()
    except RuntimeError as e:
        raise Unavailable(str(e)) from None
    return _start_envoy(kids, f"{name}-envoy", _wide_clusters(_long_requests(cfg)), [port], concurrency)


def widen_direct(cfg: dict, addresses: list[str]) -> dict:
    """testbed.envoy's `direct` cluster (one fixed backend) widened to every pod, Envoy's ROUND_ROBIN."""
    cluster = next(c for c in cfg["static_resources"]["clusters"] if c["name"] == "direct")
    cluster["lb_policy"] = "ROUND_ROBIN"
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": a.rsplit(":", 1)[0],
                                                     "port_value": int(a.rsplit(":", 1)[1])}}}} for a in addresses]
    return cfg


def round_robin_bootstrap(port: int, addresses: list[str]) -> dict:
    return widen_direct(bootstrap(free_port(), {"direct": port}, direct_backend=int(addresses[0].rsplit(":", 1)[1])),
                        addresses)


# ------------------------------------------------------------------ epp

def epp_config(name: str, pool, logdir: str, kv_port: int | None = None, suffix: str = "") -> str:
    """The config file for an epp router. precise.yaml is the repo's file with only what depends on this
    machine replaced: the tokenizer directory (the sims'), the model name, the block size and the
    address epp binds for the pods' KV events."""
    path = config_path(name)
    text = _config_text(path)
    if not text:
        raise Unavailable(f"config {path} not readable")
    if "precise-prefix-cache" not in text:
        return path
    from vllm_sim.tokenizer import DEFAULT_DIR
    doc = yaml.safe_load(text)
    for plugin in doc.get("plugins", []):
        params = plugin.setdefault("parameters", {}) or {}
        plugin["parameters"] = params
        if plugin["type"] == "token-producer" and "local" in params:
            params["local"]["path"] = DEFAULT_DIR
            params["modelName"] = pool.model
        if plugin["type"] in ("precise-prefix-cache-producer", "precise-prefix-cache-scorer"):
            params.setdefault("tokenProcessorConfig", {})["blockSize"] = pool.block_size
            params.setdefault("kvEventsConfig", {})["zmqEndpoint"] = f"tcp://127.0.0.1:{kv_port or pool.kv_port}"
    out = os.path.join(logdir, f"{os.path.basename(path).rsplit('.', 1)[0]}-bench{suffix}.yaml")
    with open(out, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return out


def epp_queue_histograms(port: int) -> dict[str, dict]:
    """epp's flow-control queue-time histogram per fairness id (wall seconds): {fid: {"le": {bound: cumulative},
    "sum": s, "count": n}}; empty when flow control is off."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, dict] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != "llm_d_epp_flow_control_request_queue_duration_seconds":
            continue
        for smp in fam.samples:
            h = out.setdefault(smp.labels["fairness_id"], {"le": {}, "sum": 0.0, "count": 0.0})
            if smp.name.endswith("_bucket"):
                le = float(smp.labels["le"])
                h["le"][le] = h["le"].get(le, 0.0) + smp.value
            elif smp.name.endswith("_sum"):
                h["sum"] += smp.value
            elif smp.name.endswith("_count"):
                h["count"] += smp.value
    return out


def epp_sample(port: int, metric: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(metric) and line[len(metric):len(metric) + 1] in (" ", "{"))


# ------------------------------------------------------------------ peers

def peer_python(package: str, install: bool = True, base: str = PY) -> tuple[str, str]:
    """(python of the peer's venv, installed version); installs into out/bench-venvs/<package> with pip,
    the venv made by `base` (another Python when the package needs one)."""
    venv = os.path.join(VENVS, package)
    py = os.path.join(venv, "bin", "python")
    log = os.path.join(VENVS, f"{package}.install.log")

    def version() -> str | None:
        try:
            return subprocess.run([py, "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
                                  capture_output=True, text=True, timeout=60, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    v = version() if os.path.exists(py) else None
    if v:
        return py, v
    if not install:
        raise Unavailable(f"{package} not installed in {venv} (run without --no-install)")
    os.makedirs(VENVS, exist_ok=True)
    print(f"  installing {package} into {os.path.relpath(venv, ROOT)} (pip, PyPI) ...", flush=True)
    with open(log, "w") as out:
        try:
            subprocess.run([base, "-m", "venv", "--clear", venv], stdout=out, stderr=subprocess.STDOUT, check=True, timeout=300)
            subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check", package], stdout=out,
                           stderr=subprocess.STDOUT, check=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as e:
            tail = open(log, errors="replace").read().strip().splitlines()[-1:] or [""]
            raise Unavailable(f"pip install {package} failed ({type(e).__name__}): {tail[0][:160]}")
    v = version()
    if not v:
        raise Unavailable(f"{package} installed but not importable (see {log})")
    return py, v


def listening_addresses(pid: int) -> list[str]:
    """Local ip:port of every TCP socket this process listens on (from /proc), IPv4 and IPv6."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return []
    out = []
    for table in ("tcp", "tcp6"):
        try:
            lines = open(f"/proc/{pid}/net/{table}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:      # LISTEN
                hexip, hexport = f[1].split(":")
                if len(hexip) == 8:
                    ip = ".".join(str(int(hexip[i:i + 2], 16)) for i in (6, 4, 2, 0))
                else:
                    ip = "::1" if hexip == "0" * 24 + "01000000" else ("::" if set(hexip) == {"0"} else hexip)
                out.append(f"{ip}:{int(hexport, 16)}")
    return out


def start_peer(kids: Children, name: str, pool, install: bool, wrap: list[str] | None = None,
               label: str = "") -> Running:
    """wrap prefixes the command (the pinned benchmark's taskset); label names its log (replicas)."""
    package, policy = PEERS[name]
    py, version = peer_python(package, install)
    port, prom = free_port(), free_port()
    urls = [f"http://{a}" for a in pool.addresses]
    common = ["--worker-urls", *urls, "--policy", policy, "--host", "127.0.0.1", "--port", str(port),
              "--prometheus-host", "127.0.0.1", "--prometheus-port", str(prom)]
    if package == "sglang-router":
        cmd = [py, "-m", "sglang_router.launch_router", *common, "--log-level", "warn"]
    else:
        cmd = [os.path.join(os.path.dirname(py), "vllm-router"), *common, "--log-level", "warning"]
    p = kids.start(label or name, [*(wrap or []), *cmd])
    wait_port(port, 120, p, name)
    time.sleep(0.3)
    bad = [a for a in listening_addresses(p.pid) if not a.startswith(("127.0.0.1:", "::1:"))]
    if bad:
        kids.stop(p)
        raise Unavailable(f"{name} listened on {', '.join(bad)} (not loopback): stopped")
    return Running(name, f"http://127.0.0.1:{port}", {"router": p.pid},
                   {"package": package, "version": version, "policy": policy, "cmd": " ".join(cmd[1:])})


# ------------------------------------------------------------------ start any

def start(kids: Children, name: str, pool, install: bool = True, envoy_concurrency: int = 2,
          epp_args: list | None = None, replicas: int = 1) -> Running:
    if replicas > 1:
        from .replicas import start_replicas
        return start_replicas(kids, name, pool, install, envoy_concurrency, replicas)
    if name in PEERS:
        return start_peer(kids, name, pool, install)
    port = free_port()
    if name == "envoy-rr":
        p = start_envoy(kids, file_label(name), round_robin_bootstrap(port, pool.addresses), port, envoy_concurrency)
        return Running(name, f"http://127.0.0.1:{port}", {"envoy": p.pid}, {"lb": "Envoy ROUND_ROBIN"})
    cfg = epp_config(name, pool, kids.logdir)
    grpc, mport = free_port(), free_port()
    # epp's clocks run on wall time: its 50 ms scrape and 2 s staleness defaults, scaled to engine time
    ts = pool.spec.time_scale
    epp = start_epp(kids, pool.endpoints_file, grpc, f"{50 / ts:.0f}ms",
                    extra=["--metrics-port", str(mport), "--config-file", cfg,
                           "--metrics-staleness-threshold", f"{2000 / ts:.0f}ms", *(epp_args or [])],
                    name=f"{file_label(name)}-epp")
    wait_port(mport, 30, epp, "epp metrics")
    env = start_envoy(kids, file_label(name), bootstrap(free_port(), {"FULL_DUPLEX_STREAMED": port}, epp_port=grpc), port,
                      envoy_concurrency)
    return Running(name, f"http://127.0.0.1:{port}", {"envoy": env.pid, "epp": epp.pid},
                   {"config": os.path.relpath(cfg, ROOT) if cfg.startswith(ROOT) else cfg}, epp_metrics=mport)
