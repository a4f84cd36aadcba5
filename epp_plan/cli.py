"""`epp-plan`: which pool and scheduling config serve a workload best, from a simulation in virtual time.

    epp-plan hack/bench/scenarios/shared-prefix.yaml                      # the scenario's epp routers
    epp-plan hack/bench/scenarios/pd/long-input.yaml --stage -1 --slo ttft_p90=2 --slo itl_p90=0.05
    epp-plan trace.jsonl --config config/pd.yaml --pd 1:3,2:2,3:1 --non-cached-tokens 256,1024,4096 \\
        --profile llama-70b-4xh100 --slo ttft_p90=2 --out out/plan

A candidate is an EndpointPickerConfig with a pool's role counts; the sweep options multiply them
(configs x --pd x --non-cached-tokens x each --weight). Each runs the same requests through N simulated
vLLM engines (vllm_sim's engine) and epp's real scheduler (the config's plugins, prefix indexes, P/D
handler), the deployment's delays as events (stack options below). Writes results.json, report.md,
recommended.yaml (+ recommended-pool.json) and pareto.png into --out, and prints the table.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import sys
import time

import yaml

from .candidates import CandidateError, config_label, config_path, expand, parse_weights
from .plan import SLO_KEYS, Workload, judge, pareto, pod_flags_for, recommend, run_candidate, stack_dict
from .report import markdown, plot
from .stack import Stack
from .trace import TraceError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="epp-plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("workload", help="a benchmark scenario (hack/bench/scenarios/*.yaml, P/D ones with variants) or a JSONL trace")
    a("--out", default="", help="output directory (default out/plan/<name>-<time>)")
    a("--quick", action="store_true", help="the scenario's quick overrides")
    g = ap.add_argument_group("candidates")
    g.add_argument("--config", action="append", default=[],
                   help="EndpointPickerConfig file or benchmark router (epp-approx, epp-pd, ...); repeatable. "
                        "Default: the scenario's epp routers (per variant); for a trace config/default.yaml")
    g.add_argument("--pd", default="", help="comma list of role counts P:D (0:4 = four aggregated pods)")
    g.add_argument("--non-cached-tokens", default="", help="comma list of the P/D decider's nonCachedTokens")
    g.add_argument("--weight", action="append", default=[], help="PLUGIN=w1,w2,...: scorer weights to try; repeatable")
    g = ap.add_argument_group("pool (traces; scenarios bring theirs)")
    g.add_argument("--pods", type=int, default=4, help="aggregated pods when no --pd is given")
    g.add_argument("--profile", default="llama-8b-h100")
    g.add_argument("--model", default="sim-model")
    g.add_argument("--sim-arg", action="append", default=[], help="any vllm-sim engine flag, e.g. --sim-arg=--num-gpu-blocks-override=2000")
    g.add_argument("--role-arg", action="append", default=[],
                   help="ROLE=FLAG: a vllm-sim flag for that role's pods only, e.g. --role-arg=prefill=--profile=llama-70b-4xh100")
    g = ap.add_argument_group("goals")
    g.add_argument("--slo", action="append", default=[], help=f"KEY=SECONDS, KEY one of {', '.join(SLO_KEYS)}; repeatable")
    g.add_argument("--stage", type=int, default=-1, help="the stage the SLOs judge (default the last: highest load)")
    g = ap.add_argument_group("stack (what the deployment adds; docs/planner.md)")
    g.add_argument("--time-scale", type=float, default=None,
                   help="engine s per wall s of the modelled deployment (default: the scenario's, 1 for a trace)")
    g.add_argument("--router-ms", type=float, default=None, help="wall ms client -> Envoy -> epp -> pod")
    g.add_argument("--return-ms", type=float, default=None, help="wall ms pod -> client per chunk")
    g.add_argument("--hop-ms", type=float, default=None, help="wall ms of one more local HTTP hop (P/D sidecar)")
    g.add_argument("--kv-event-ms", type=float, default=None, help="wall ms from an engine step to epp's KV index")
    g.add_argument("--scrape-interval", type=float, default=None, help="engine s between metric scrapes")
    g.add_argument("--calibrate-from", default="",
                   help="a wall-clock benchmark's results.json: its measured client-over-engine TTFT becomes router-ms")
    g = ap.add_argument_group("run")
    g.add_argument("--jobs", type=int, default=1, help="candidates simulated in parallel (processes)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--repeats", type=int, default=1,
                   help="simulate each candidate this many times (seeds seed, seed+1, ...): medians and ranges")
    g.add_argument("--export-trace", default="", help="write the first candidate's requests as a JSONL trace "
                                                          "(arrival, prompt and output tokens)")
    g.add_argument("--export-text", action="store_true", help="the exported trace carries the prompts' text too")
    g.add_argument("--no-plots", action="store_true")
    g.add_argument("--json", action="store_true", help="print results.json instead of the table")
    return ap


def parse_slos(specs: list[str]) -> dict[str, float]:
    out = {}
    for spec in specs:
        k, sep, v = spec.partition("=")
        if not sep or k not in SLO_KEYS:
            raise CandidateError(f"--slo {spec!r}: want KEY=SECONDS with KEY one of {', '.join(SLO_KEYS)}")
        out[k] = float(v)
    return out


def calibrated_router_ms(path: str, return_ms: float) -> float:
    """The wall ms a benchmark run's stack adds to a request: per stage, the client's mean TTFT over the
    sims' own (engine-clock) mean TTFT, divided by the time scale; the smallest over the run's stages.
    The stages' differences vary with CPU contention (10-20 ms on a shared 2-core machine) and a mean
    carries the stalls of a contended moment; the least contended stage is the closest to what a typical
    request sees, which is what the planner's constant path latency stands for."""
    with open(path) as fh:
        res = json.load(fh)
    runs = res.values() if "routers" not in res else [res]       # hack.bench.pd writes {variant: results}
    vals = []
    for run in runs:
        ts = run["scenario"]["pool"]["time_scale"]
        for r in run["routers"].values():
            for s in r.get("stages", []):
                c, e = s.get("ttft_mean_s"), s.get("server_ttft_mean_s")
                if c is not None and e is not None and c == c and e == e:
                    vals.append((c - e) / ts * 1e3)
    if not vals:
        raise CandidateError(f"--calibrate-from {path}: no stage with client and server TTFT")
    return max(0.0, min(vals) - return_ms)


def _is_scenario(path: str) -> bool:
    return path.endswith((".yaml", ".yml"))


def bases_for(a, workload: Workload) -> list:
    """(label, config text, roles, workload, origin) per base candidate."""
    def read(ref):
        with open(config_path(ref)) as fh:
            return fh.read()
    if workload.kind == "trace":
        refs = a.config or ["epp-approx"]
        return [(config_label(r), read(r), ["decode"] * a.pods, workload, {"router": r}) for r in refs]
    with open(workload.path) as fh:
        doc = yaml.safe_load(fh)
    from testbed import scenario as sc
    if "variants" in doc:
        scen = [(name, s, Workload("scenario", workload.path, workload.quick, name)) for name, s in sc.variants(workload.path, workload.quick)]
    else:
        s = sc.load(workload.path, workload.quick)
        scen = [("", s, workload)]
    out = []
    for vname, s, wl in scen:
        roles = [r.strip() for r in s.pool.roles.split(",")]
        roles = [roles[i % len(roles)] for i in range(s.pool.count)]
        refs = a.config or [r for r in s.routers if r.startswith("epp")]
        for r in refs:
            label = config_label(r) + (f" ({vname})" if vname and not a.config else "")
            out.append((label, read(r), roles, wl, {"router": r, "variant": vname}))
    return out


def _progress(total: int):
    if total < 2:
        return None
    try:
        from tqdm import tqdm
        return tqdm(total=total, unit="candidate", file=sys.stderr, dynamic_ncols=True)
    except ImportError:
        return None


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR)      # the sims' capped max_model_len etc.: not news here
    try:
        return _main(a)
    except (CandidateError, TraceError, OSError, ValueError) as e:
        print(f"epp-plan: {e}", file=sys.stderr)
        return 2


def _main(a) -> int:
    t0 = time.perf_counter()
    kind = "scenario" if _is_scenario(a.workload) else "trace"
    workload = Workload(kind, a.workload, a.quick, model=a.model, seed=a.seed + 1)
    slos = parse_slos(a.slo)
    bases = bases_for(a, workload)
    if not bases:
        raise CandidateError("no candidate: the scenario names no epp router; give --config")
    pods_default = ["decode"] * a.pods
    for i, b in enumerate(bases):      # a trace without --pd uses --pods aggregated pods
        if kind == "trace":
            bases[i] = (b[0], b[1], pods_default, *b[3:])
    flags_overrides = (["--profile", a.profile] if kind == "trace" else []) + list(a.sim_arg)
    role_flags: dict[str, list[str]] = {}
    for spec in a.role_arg:
        role, sep, flag = spec.partition("=")
        if not sep or role not in ("prefill", "decode") or not flag.startswith("--"):
            raise CandidateError(f"--role-arg {spec!r}: want prefill=--FLAG=VALUE or decode=--FLAG=VALUE")
        role_flags.setdefault(role, []).append(flag)
    flags, model, block_size = pod_flags_for(workload, flags_overrides)
    pds = [x for x in a.pd.split(",") if x]
    nct = [int(x) for x in a.non_cached_tokens.split(",") if x]
    cands = expand(bases, pds, nct, parse_weights(a.weight), model, block_size)

    s = workload.scenario() if kind == "scenario" else None
    stack = Stack(time_scale=a.time_scale if a.time_scale is not None else (s.pool.time_scale if s else 1.0))
    for opt, field in (("router_ms", "router_ms"), ("return_ms", "return_ms"), ("hop_ms", "hop_ms"),
                       ("kv_event_ms", "kv_event_ms"), ("scrape_interval", "scrape_interval_s")):
        if getattr(a, opt) is not None:
            setattr(stack, field, getattr(a, opt))
    if a.calibrate_from:
        stack.router_ms = calibrated_router_ms(a.calibrate_from, stack.return_ms)

    jobs = [(c, c.workload or workload) for c in cands]
    results = [None] * len(jobs)
    bar = _progress(len(jobs))
    if a.jobs > 1 and len(jobs) > 1:
        with concurrent.futures.ProcessPoolExecutor(max_workers=a.jobs) as pool:
            futs = {pool.submit(run_candidate, c, wl, flags_overrides, stack, a.seed,
                               a.export_trace if i == 0 else "", a.export_text, a.repeats, role_flags): i
                    for i, (c, wl) in enumerate(jobs)}
            for fut in concurrent.futures.as_completed(futs):
                results[futs[fut]] = fut.result()
                if bar:
                    bar.update(1)
    else:
        for i, (c, wl) in enumerate(jobs):
            if bar:
                bar.set_description(c.name[:40])
            results[i] = run_candidate(c, wl, flags_overrides, stack, a.seed, a.export_trace if i == 0 else "",
                                       a.export_text, a.repeats, role_flags)
            if bar:
                bar.update(1)
    if bar:
        bar.close()
    for r in results:
        judge(r, slos, a.stage)
    front = pareto(results, slos)
    rec = recommend(results, slos)
    name = os.path.splitext(os.path.basename(a.workload))[0]
    outdir = a.out or os.path.join("out", "plan", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(outdir, exist_ok=True)
    doc = {"workload": {"kind": kind, "path": a.workload, "quick": a.quick}, "slos": slos, "stage": a.stage,
           "stack": stack_dict(stack), "pool_flags": flags, "candidates": results, "pareto": front,
           "recommended": rec["name"] if rec else None, "wall_s": time.perf_counter() - t0,
           "engine_s": sum(r["sim"]["engine_s"] for r in results)}
    for r in results:
        r["pareto"] = r["name"] in front
    if rec:
        with open(os.path.join(outdir, "recommended.yaml"), "w") as fh:
            fh.write(f"# epp-plan recommendation for {a.workload}: {rec['name']}\n"
                     f"# pool roles: {json.dumps(rec['roles'])}; {rec['tok_s_per_gpu']:.0f} output tok/s per GPU\n")
            fh.write(rec["config_text"])
        with open(os.path.join(outdir, "recommended-pool.json"), "w") as fh:
            json.dump({"roles": rec["roles"], "gpus": rec["gpus"], "pod_flags": rec["pod_flags"],
                       "role_flags": rec["role_flags"], "settings": rec["settings"]},
                      fh, indent=1)
    if a.no_plots:
        doc["plots_note"] = "skipped (--no-plots)"
    else:
        try:
            doc["plots"] = plot(doc, outdir)
        except ImportError:
            doc["plots_note"] = "skipped: matplotlib not installed (pip install -e '.[plan]')"
    doc["wall_s"] = time.perf_counter() - t0
    with open(os.path.join(outdir, "results.json"), "w") as fh:
        json.dump(doc, fh, indent=1, default=str)
    md = markdown(doc)
    with open(os.path.join(outdir, "report.md"), "w") as fh:
        fh.write(md + "\n")
    print(json.dumps(doc, indent=1, default=str) if a.json else md)
    print(f"\n(wrote {outdir}/results.json, report.md" + (", recommended.yaml" if rec else "") + ")", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
