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


class ScenarioError(ValueError):
    pass


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
    # random / long_input: every prompt new; length uniform in [input_min, input_max]
    input_min: int = 512
    input_max: int = 512
    # multi_turn: sessions sharing a system prompt per group, each turn = history + a new question
    sessions: int = 16
    turns: int = 4
    # output length uniform in [output_min, output_max] when output_max > 0 (else output_len)
    output_min: int = 0
    output_max: int = 0
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
    goals: list = field(default_factory=list)     # checked on every run (hack/bench/goals.py): best-epp, vs-peers, pair
    router_replicas: int = 1                      # each router as N replicas behind Envoy (epp: N epp processes)
    events: list = field(default_factory=list)    # churn: [{stage, at_s, action: restart | reset_prefix_cache, pod}]
    side_client: dict = field(default_factory=dict)  # churn: {rate, pods, stages}: requests straight to pods
    path: str = ""


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
    from .events import validate_events
    validate_events(s)
    if p.count < 1 or p.time_scale <= 0:
        raise ScenarioError(f"{s.path}: pool.count >= 1 and pool.time_scale > 0")
    if not s.routers:
        raise ScenarioError(f"{s.path}: no routers")


def stages(s: Scenario) -> list[float]:
    """The stage levels in order: rates (engine req/s) or concurrencies."""
    return [float(x) for x in (s.load.concurrency if s.load.mode == "concurrency" else s.load.rates)]
