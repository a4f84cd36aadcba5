"""Scenario files: the pool, the routers to compare, the workload and the load, in one YAML document.

Every duration and rate in a scenario is in *engine* time: what a real vLLM pool would see. The pool
runs at `time_scale` engine seconds per wall second, so a stage of `duration_s` takes
duration_s / time_scale wall seconds and the load generator offers rate * time_scale requests per wall
second; latencies measured on the wall clock are multiplied by time_scale before they are reported.
Unknown keys are an error that names the key (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, fields

import yaml

# the benchmark's epp routers: the EndpointPickerConfig each runs (paths from the repository root)
ROUTER_CONFIGS = {"epp-random": "config/random.yaml", "epp-load-only": "config/load-only.yaml",
                  "epp-approx": "config/approx-capped.yaml", "epp-prefix-heavy": "config/prefix-heavy.yaml",
                  "epp-precise": "config/precise.yaml", "epp-pd": "config/pd.yaml", "epp-sticky": "config/sticky.yaml",
                  # flow control sized for the noisy-neighbor scenario's pool (maxConcurrency = its max_num_seqs)
                  "epp-flow": "hack/bench/configs/noisy-neighbor-flow.yaml",
                  # a control: the approximate scorer with precise.yaml's weights (prefix 3, KV 1, queue 1)
                  "epp-approx-pw": "hack/bench/configs/approx-precise-weights.yaml",
                  # upstream's default as epp runs it with no config (the prefix producer uncapped)
                  "epp-upstream": "config/upstream-default.yaml",
                  # ours: the predicted-latency scorer on the approximate producer, and on the precise one
                  "epp-latency": "config/predicted-latency.yaml",
                  "epp-latency-precise": "config/predicted-latency-precise.yaml",
                  # ours: the same with upstream's prefix scorer beside it (the shipped default)
                  "epp-latency-affinity": "config/default.yaml",
                  "epp-pd-adaptive": "config/pd-adaptive.yaml", "epp-pd-flex": "config/pd-flex.yaml"}


class ScenarioError(ValueError):
    pass


EVENT_ACTIONS = ("restart", "reset_prefix_cache")


def validate_events(s) -> None:
    n = s.pool.count
    for i, ev in enumerate(s.events or []):
        where = f"{s.path}: events[{i}]"
        if not isinstance(ev, dict) or set(ev) - {"stage", "at_s", "action", "pod"}:
            raise ScenarioError(f"{where}: a mapping of stage, at_s, action, pod")
        if ev.get("action") not in EVENT_ACTIONS:
            raise ScenarioError(f"{where}: action must be one of {', '.join(EVENT_ACTIONS)}")
        if not isinstance(ev.get("pod"), int) or not 0 <= ev["pod"] < n:
            raise ScenarioError(f"{where}: pod must be an index below pool.count ({n})")
        if not isinstance(ev.get("stage"), int) or ev["stage"] < 1:
            raise ScenarioError(f"{where}: stage is 1-based")
    sc = s.side_client or {}
    if sc:
        if set(sc) - {"rate", "pods", "stages"} or not isinstance(sc.get("rate"), (int, float)) or sc["rate"] <= 0:
            raise ScenarioError(f"{s.path}: side_client: {{rate > 0, pods: [indexes], stages: [1-based]}}")
        if not sc.get("pods") or any(not isinstance(p, int) or not 0 <= p < n for p in sc["pods"]):
            raise ScenarioError(f"{s.path}: side_client.pods: pod indexes below pool.count ({n})")




@dataclass
class Pool:
    count: int = 4                    # simulated vLLM pods
    profile: str = "llama-8b-h100"    # vllm_sim latency profile
    time_scale: float = 1.0           # engine seconds per wall second
    gpu_blocks: int | None = None     # --num-gpu-blocks-override (None: the profile's)
    offload_blocks: int = 0           # --kv-offload-blocks: CPU tier per pod (0 = off)
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    roles: str = "decode"             # vllm_sim.pool --roles (P/D scenarios: prefill,decode,...)
    kv_events: bool = True            # every pod publishes KV events (precise routers subscribe)
    model: str = "sim-model"
    sim_args: list = field(default_factory=list)   # any other vllm-sim flags
    profiles: list = field(default_factory=list)   # latency profiles cycled over the pods (unlike GPUs); [] = profile


@dataclass
class Workload:
    type: str = "shared_prefix"       # shared_prefix | random | multi_turn | long_input
    api: str = "completions"          # completions | chat
    seed: int = 1
    # shared_prefix (inference-perf's shape): groups x prompts_per_group prompts, each = the group's
    # system prompt + its own question; the list is shuffled once and sent in a cycle, as inference-perf does
    groups: int = 8
    prompts_per_group: int = 5
    system_len: int = 1000
    question_len: int = 200
    output_len: int = 64
    # random / long_input: output length uniform in [output_min, output_max] instead (0: output_len); equal
    # lengths keep requests that start together finishing together, so a saturated pool frees its slots in bursts
    output_min: int = 0
    output_max: int = 0
    # random / long_input: every prompt new; length uniform in [input_min, input_max]
    input_min: int = 512
    input_max: int = 512
    # multi_turn: sessions sharing a system prompt per group, each turn = history + a new question
    sessions: int = 16
    turns: int = 4
    # tenants (optional): each its own Poisson arrivals at rate_x x the stage's rate (a number, or one per
    # stage), its requests carrying its headers (fairness id, objective); empty: one anonymous stream
    tenants: list = field(default_factory=list)
    # agentic: each session (its own x-session-id) shares a tool-definitions system prompt with its group,
    # then every turn sends the whole history plus a tool result of tool_min..tool_max tokens
    tool_min: int = 200
    tool_max: int = 800
    think_s: float = 0.0              # engine seconds a session waits between an answer and its next turn


@dataclass
class Load:
    mode: str = "poisson"             # poisson (open loop) | concurrency (closed loop) | sessions (agentic:
                                      # Poisson arrivals of sessions, each sending its turns one after another)
    rates: list = field(default_factory=lambda: [1.0])          # engine req/s, one stage each, in order
    concurrency: list = field(default_factory=lambda: [4])      # closed loop: in-flight requests per stage
    duration_s: float = 60.0          # engine seconds of arrivals per stage
    max_requests: int = 0             # per stage (0 = no cap)
    warmup_requests: int = 0          # before the first stage, not measured (caches warm, events flowing)
    drain_timeout_s: float = 600.0    # engine seconds to wait for a stage's last requests
    request_timeout_s: float = 1200.0  # engine seconds before a request counts as an error
    on_s: float = 0.0                 # bursty: arrivals only during on_s of every on_s + off_s engine seconds,
    off_s: float = 0.0                #   at rate x (on_s + off_s) / on_s, so the stage's mean rate is its rate


@dataclass
class Scenario:
    name: str
    description: str = ""
    pool: Pool = field(default_factory=Pool)
    routers: list = field(default_factory=lambda: ["envoy-rr", "epp-approx"])
    workload: Workload = field(default_factory=Workload)
    load: Load = field(default_factory=Load)
    quick: dict = field(default_factory=dict)     # overrides applied by --quick (same nesting)
    goal: dict = field(default_factory=dict)      # optional: {router, baseline, min_throughput_x, min_ttft_p90_x}
    epp_args: list = field(default_factory=list)  # extra flags for every epp router (e.g. --objective NAME=PRIORITY)
    goals: list = field(default_factory=list)     # checked on every run (hack/bench/goals.py): best-epp, vs-peers, pair
    router_replicas: int = 1                      # each router as N replicas behind Envoy (epp: N epp processes)
    events: list = field(default_factory=list)    # churn: [{stage, at_s, action: restart | reset_prefix_cache, pod}]
    side_client: dict = field(default_factory=dict)  # churn: {rate, pods, stages}: requests straight to pods
    path: str = ""


def engine_flags(p: Pool) -> list[str]:
    """The vllm-sim flags that shape each pod's engine (model, profile, cache, batch limits, then
    sim_args): what the benchmark's pool starts with and what the planner builds its engines from."""
    args = ["--model", p.model, "--profile", p.profile, "--block-size", str(p.block_size),
            "--max-num-seqs", str(p.max_num_seqs), "--max-num-batched-tokens", str(p.max_num_batched_tokens)]
    if p.gpu_blocks:
        args += ["--num-gpu-blocks-override", str(p.gpu_blocks)]
    if p.offload_blocks:
        args += ["--kv-offload-blocks", str(p.offload_blocks)]
    return args + [str(a) for a in p.sim_args]


def _build(cls, doc: dict, where: str):
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ScenarioError(f"{where}: expected a mapping, got {type(doc).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**doc)


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def from_dict(doc: dict, path: str = "<scenario>", quick: bool = False) -> Scenario:
    if not isinstance(doc, dict) or "name" not in doc:
        raise ScenarioError(f"{path}: a scenario is a mapping with at least `name`")
    if quick:
        doc = merge(doc, doc.get("quick") or {})
    s = _build(Scenario, {k: v for k, v in doc.items() if k not in ("pool", "workload", "load")}, path)
    s.pool = _build(Pool, doc.get("pool"), f"{path}: pool")
    s.workload = _build(Workload, doc.get("workload"), f"{path}: workload")
    s.load = _build(Load, doc.get("load"), f"{path}: load")
    s.path = path
    validate(s)
    return s


def load(path: str, quick: bool = False) -> Scenario:
    with open(path) as f:
        doc = yaml.safe_load(f)
    return from_dict(doc, os.path.relpath(path), quick)


def validate(s: Scenario) -> None:
    w, ld, p = s.workload, s.load, s.pool
    if w.type not in ("shared_prefix", "random", "multi_turn", "long_input", "agentic"):
        raise ScenarioError(f"{s.path}: workload.type {w.type!r}: use shared_prefix, random, multi_turn, long_input "
                            f"or agentic")
    if w.api not in ("completions", "chat"):
        raise ScenarioError(f"{s.path}: workload.api {w.api!r}: use completions or chat")
    if w.type == "multi_turn" and w.api != "chat":
        raise ScenarioError(f"{s.path}: a multi_turn workload needs api: chat")
    if ld.mode not in ("poisson", "concurrency", "sessions"):
        raise ScenarioError(f"{s.path}: load.mode {ld.mode!r}: use poisson, concurrency or sessions")
    if (ld.mode == "sessions") != (w.type == "agentic"):
        raise ScenarioError(f"{s.path}: an agentic workload runs with load.mode sessions (and only it)")
    if ld.on_s < 0 or ld.off_s < 0 or (ld.off_s > 0 and ld.on_s <= 0):
        raise ScenarioError(f"{s.path}: load.on_s > 0 when load.off_s is set")
    if s.router_replicas < 1:
        raise ScenarioError(f"{s.path}: router_replicas >= 1")
    validate_events(s)
    if p.count < 1 or p.time_scale <= 0:
        raise ScenarioError(f"{s.path}: pool.count >= 1 and pool.time_scale > 0")
    if not s.routers:
        raise ScenarioError(f"{s.path}: no routers")
    n = len(stages(s))
    for i, t in enumerate(w.tenants):
        where = f"{s.path}: workload.tenants[{i}]"
        if not isinstance(t, dict) or set(t) - {"name", "rate_x", "headers"} or not isinstance(t.get("name"), str):
            raise ScenarioError(f"{where}: a tenant is {{name, rate_x, headers}}")
        rx = t.get("rate_x", 1.0)
        if isinstance(rx, list) and len(rx) != n:
            raise ScenarioError(f"{where}: rate_x has {len(rx)} values for {n} stages")
        if not isinstance(t.get("headers", {}), dict):
            raise ScenarioError(f"{where}: headers must be a mapping")
    if w.tenants and ld.mode != "poisson":
        raise ScenarioError(f"{s.path}: tenants need load.mode poisson")


def tenant_rates(s: Scenario, stage: int) -> dict[str, float]:
    """Each tenant's share of the stage's rate (rate_x), by name."""
    out = {}
    for t in s.workload.tenants:
        rx = t.get("rate_x", 1.0)
        out[t["name"]] = float(rx[stage] if isinstance(rx, list) else rx)
    return out


def stages(s: Scenario) -> list[float]:
    """The stage levels in order: rates (engine req/s) or concurrencies."""
    return [float(x) for x in (s.load.concurrency if s.load.mode == "concurrency" else s.load.rates)]


def variants(path: str, quick: bool = False, only: list[str] = ()) -> list[tuple[str, Scenario]]:
    """A P/D scenario file (a scenario plus `variants: {name: overrides}`) as one scenario per variant."""
    with open(path) as fh:
        doc = yaml.safe_load(fh)
    if quick:
        q = doc.get("quick") or {}
        doc = merge(doc, q)
        if "variants" in q:       # the quick run's variants replace the full list
            doc["variants"] = q["variants"]
    table = doc.pop("variants", None)
    doc.pop("quick", None)
    if not isinstance(table, dict) or not table:
        raise ScenarioError(f"{path}: a P/D scenario needs `variants: {{name: overrides}}`")
    out = []
    for name, over in table.items():
        if only and name not in only:
            continue
        d = merge(doc, over or {})
        d["name"] = f"{doc['name']}-{name.replace(':', 'to')}"
        out.append((name, from_dict(d, f"{os.path.relpath(path)} [{name}]")))
    return out
