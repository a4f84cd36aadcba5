"""A stage's numbers as the wall-clock benchmark reports them (hack/bench/report.summarize): engine
time, nearest-rank percentiles, throughput over the stage from its start to its last answer (or its
drain timeout), the sims' prefix-cache hit rate over the stage."""
from __future__ import annotations

import math


def pct(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile, the benchmark's definition."""
    if not sorted_vals:
        return math.nan
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def summarize(st, pods) -> dict:
    ok = [f for f in st.flights if f.status == 200]
    eng = max(1e-9, st.t_end - st.t_start)
    ttft = sorted(f.t_first - f.t_send for f in ok)
    itl = sorted(x for f in ok for x in f.itl)
    e2e = sorted(f.t_done - f.t_send for f in ok)
    prompt = sum(f.prompt_tokens for f in ok)
    deltas = [{k: a[k] - b[k] for k in a} for a, b in zip(st.counters1, st.counters0)]
    q = sum(d["queries"] for d in deltas)
    per_pod = [0] * len(pods)
    for f in ok:          # as the sims count finished requests: a P/D request's prefill leg too
        per_pod[f.pod.index] += 1
        if f.prefill is not None:
            per_pod[f.prefill.index] += 1
    mean = sum(per_pod) / len(per_pod) if per_pod else math.nan
    errors: dict[str, int] = {}
    for f in st.flights:
        if f.status != 200:
            k = f.error.split(":")[0] if f.error else f"http {f.status}"
            errors[k] = errors.get(k, 0) + 1
    pd = sum(1 for f in ok if f.prefill is not None)
    # what the sims' own histograms hold (vllm:time_to_first_token_seconds, request_queue_time_seconds):
    # every engine request, prefill legs included, on the engine clock, with no proxy in it
    eng_reqs = [r for f in ok for r in (f.eng, f.pre_eng) if r is not None and r.first_token_time is not None]
    eng_ttft = [r.first_token_time - r.arrival_time for r in eng_reqs]
    eng_queue = [r.first_scheduled_time - r.arrival_time for r in eng_reqs if r.first_scheduled_time is not None]
    return {
        "mode": st.plan.mode, "level": st.plan.level, "sent": len(st.flights), "completed": len(ok),
        "errors": len(st.flights) - len(ok), "error_kinds": errors, "drained": st.drained, "engine_s": eng,
        "req_per_s": len(ok) / eng, "output_tok_per_s": sum(f.out_tokens for f in ok) / eng,
        "input_tok_per_s": prompt / eng,
        "ttft_p50_s": pct(ttft, 50), "ttft_p90_s": pct(ttft, 90), "ttft_p99_s": pct(ttft, 99),
        "ttft_mean_s": sum(ttft) / len(ttft) if ttft else math.nan,
        "itl_p50_ms": pct(itl, 50) * 1e3, "itl_p90_ms": pct(itl, 90) * 1e3,
        "e2e_p50_s": pct(e2e, 50), "e2e_p90_s": pct(e2e, 90),
        "hit_rate": sum(d["hits"] for d in deltas) / q if q else math.nan,
        "client_cached_share": sum(f.cached_tokens for f in ok) / prompt if prompt else math.nan,
        "pod_requests": per_pod, "imbalance": max(per_pod) / mean if per_pod and mean else math.nan,
        "preemptions": sum(d["preemptions"] for d in deltas),
        "disaggregated_share": pd / len(ok) if ok else math.nan,
        "server_ttft_mean_s": sum(eng_ttft) / len(eng_ttft) if eng_ttft else math.nan,
        "server_queue_mean_s": sum(eng_queue) / len(eng_queue) if eng_queue else math.nan,
    }
