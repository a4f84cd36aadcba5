"""Running candidates and choosing among them: per candidate its stages' numbers and GPUs, the SLO
verdict on the judged stage, the Pareto frontier (output tokens/s per GPU against the SLO latencies),
and the recommendation: the candidate meeting every SLO, with every request answered, at the most
output tokens/s per GPU."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

from testbed import scenario as scenario_mod
from testbed.scenario import engine_flags

from . import load as load_mod
from . import trace as trace_mod
from .candidates import Candidate
from .pods import PodSpec, Prompts
from .sim import Simulation
from .stack import Stack
from .stats import summarize

SLO_KEYS = {"ttft_p50": "ttft_p50_s", "ttft_p90": "ttft_p90_s", "itl_p50": "itl_p50_ms", "itl_p90": "itl_p90_ms",
            "e2e_p50": "e2e_p50_s", "e2e_p90": "e2e_p90_s"}


@dataclass
class Workload:
    """Where requests come from (picklable: each worker process rebuilds the load from it)."""
    kind: str                 # scenario | trace
    path: str
    quick: bool = False
    variant: str = ""         # a P/D scenario's variant whose workload this is (they share it)
    model: str = "sim-model"
    seed: int = 1
    drain_timeout_s: float = 600.0
    max_stages: int = 0       # 0: all (a stage never depends on later ones, so a prefix of them is exact)

    def scenario(self):
        if self.kind != "scenario":
            return None
        if self.variant:
            return dict(scenario_mod.variants(self.path, self.quick))[self.variant]
        try:
            return scenario_mod.load(self.path, self.quick)
        except scenario_mod.ScenarioError:
            v = scenario_mod.variants(self.path, self.quick)     # a P/D file: its variants share the workload
            return v[0][1]

    def build(self) -> load_mod.Load:
        if self.kind == "scenario":
            return load_mod.from_scenario(self.scenario(), self.max_stages)
        items, api = trace_mod.read(self.path, self.model, self.seed)
        return load_mod.from_trace(items, self.model, api, self.path, self.drain_timeout_s)


_PROMPTS: Prompts | None = None


SPREAD = ("output_tok_per_s", "ttft_p50_s", "ttft_p90_s", "itl_p50_ms", "itl_p90_ms", "e2e_p50_s", "e2e_p90_s",
          "hit_rate")


def run_candidate(c: Candidate, workload: Workload, flag_overrides: list[str], stack: Stack, seed: int = 0,
                  export_trace: str = "", export_text: bool = False, repeats: int = 1,
                  role_flags: dict[str, list[str]] | None = None) -> dict:
    """Simulates one candidate (`repeats` times, seeds seed, seed+1, ...: what varies is what varies
    between two real runs of the same requests, the scrape phases and the plugins' random tie-breaks);
    returns its numbers (JSON-ready), per stage the median over the repeats and their range.
    role_flags: more vllm-sim flags for the pods of one role (a prefill fleet on other GPUs)."""
    global _PROMPTS
    pod_flags = pod_flags_for(workload, flag_overrides)[0]
    if _PROMPTS is None:     # one tokenizer and prompt cache per process, shared by its candidates
        _PROMPTS = Prompts()
    t0, c0 = time.perf_counter(), time.process_time()
    runs, steps, events, pulls, gpus = [], 0, 0, {"ok": 0, "failed": 0}, 0
    for k in range(max(1, repeats)):
        pods = [PodSpec(r, pod_flags + list((role_flags or {}).get(r, ()))) for r in c.roles]
        sim = Simulation(pods, c.config_text, workload.build(), stack,
                         seed=seed + k, config_source=c.config_name, prompts=_PROMPTS).run()
        if export_trace and k == 0:
            trace_mod.write(export_trace, [f for st in sim.stages for f in st.flights], sim.load.api, export_text)
        runs.append([summarize(st, sim.pods) for st in sim.stages])
        steps, events, gpus = steps + sim.steps, events + sim.events, sum(p.gpus for p in sim.pods)
        pulls = {k2: pulls[k2] + v for k2, v in sim.pulls.items()}
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stages = runs[0] if len(runs) == 1 else [_median_stage([r[i] for r in runs]) for i in range(len(runs[0]))]
    engine_s = sum(s["engine_s"] for r in runs for s in r)
    return {"name": c.name, "config": c.config_name, "roles": c.role_counts, "settings": c.settings,
            "gpus": gpus, "stages": stages, "config_text": c.config_text, "pod_flags": pod_flags,
            "role_flags": role_flags or {},
            "repeats": len(runs),
            "sim": {"wall_s": wall, "cpu_s": cpu, "engine_s": engine_s, "steps": steps, "events": events,
                    "kv_pulls": pulls, "speed_x": engine_s / wall if wall else math.nan}}


def _median_stage(stages: list[dict]) -> dict:
    """One stage over several seeds: each number the median, the headline ones with their range."""
    out = dict(stages[0])
    for k, v in out.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [s[k] for s in stages if s[k] == s[k]]
            out[k] = statistics.median(vals) if vals else math.nan
    out["spread"] = {k: [min(s[k] for s in stages), max(s[k] for s in stages)] for k in SPREAD}
    return out


def pod_flags_for(workload: Workload, overrides: list[str]) -> tuple[list[str], str, int]:
    """(vllm-sim flags, model, block size): the scenario's pool (as its benchmark starts the sims) or
    a trace's defaults, then the command line's --sim-arg flags."""
    s = workload.scenario()
    if s is not None:
        return engine_flags(s.pool) + overrides, s.pool.model, s.pool.block_size
    flags = ["--model", workload.model] + overrides
    from vllm_sim.cli import build_parser
    args, _ = build_parser().parse_known_args(flags)
    return flags, workload.model, args.block_size


def judge(result: dict, slos: dict[str, float], stage: int) -> None:
    """Adds the judged stage, the SLO verdict and output tokens/s per GPU to a candidate's result."""
    st = result["stages"][stage] if result["stages"] else None
    result["judged_stage"] = stage if stage >= 0 else len(result["stages"]) + stage
    result["judged"] = st
    if st is None:
        result.update(meets_slo=False, why=["no stage"], tok_s_per_gpu=0.0)
        return
    why = []
    for key, limit in slos.items():
        v = st[SLO_KEYS[key]]
        if key.startswith("itl"):
            v = v / 1e3
        if not v <= limit:      # NaN fails too
            why.append(f"{key} {v:.3f}s > {limit:g}s")
    if st["errors"]:
        why.append(f"{st['errors']} requests not answered")
    result["meets_slo"] = not why
    result["why"] = why
    result["tok_s_per_gpu"] = st["output_tok_per_s"] / result["gpus"] if result["gpus"] else 0.0


def pareto(results: list[dict], slos: dict[str, float]) -> list[str]:
    """Names of the candidates no other beats on tokens/s per GPU and every SLO'd latency at once
    (TTFT p90 when no SLO is given)."""
    keys = [SLO_KEYS[k] for k in slos] or ["ttft_p90_s"]

    def point(r):
        st = r["judged"] or {}
        return [r["tok_s_per_gpu"]] + [-(st.get(k, math.inf) if st.get(k) == st.get(k) else math.inf) for k in keys]

    pts = {r["name"]: point(r) for r in results}
    front = []
    for n, p in pts.items():
        dominated = any(all(a >= b for a, b in zip(q, p)) and any(a > b for a, b in zip(q, p))
                        for m, q in pts.items() if m != n)
        if not dominated:
            front.append(n)
    return front


TIE = 0.02      # throughputs per GPU this close are a tie (below saturation they all equal the offered load)


def recommend(results: list[dict], slos: dict[str, float] | None = None) -> dict | None:
    """The candidate meeting the SLOs at the most output tokens/s per GPU; within TIE of the best, the one
    on fewer GPUs, then the lowest value of the first SLO'd latency (TTFT p90 without SLOs)."""
    ok = [r for r in results if r.get("meets_slo")]
    if not ok:
        return None
    best = max(r["tok_s_per_gpu"] for r in ok)
    tied = [r for r in ok if r["tok_s_per_gpu"] >= best * (1 - TIE)]
    key = SLO_KEYS[next(iter(slos or {}), "ttft_p90")]
    return min(tied, key=lambda r: (r["gpus"], r["judged"][key], -r["tok_s_per_gpu"], r["name"]))


def stack_dict(stack: Stack) -> dict:
    return asdict(stack)
