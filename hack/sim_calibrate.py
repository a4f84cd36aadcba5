"""Calibration table for vllm_sim's latency profiles, straight on the engine (no sockets, exact engine time).

    .venv/bin/python hack/sim_calibrate.py [--profile NAME ...]

Per profile: TTFT of a lone request by prompt length, TTFT under load, ITL against batch size, maximum
output throughput; then three behaviours routing depends on: a long prefill landing beside running decodes
raises their ITL (what P/D removes), prefix hits cut TTFT in proportion to the cached share, and KV
exhaustion queues requests.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vllm_sim import profiles  # noqa: E402
from vllm_sim.engine import Engine, EngineConfig, Request  # noqa: E402


def engine(p, **kw) -> Engine:
    cfg = dict(num_gpu_blocks=p.num_gpu_blocks, block_size=16, max_num_seqs=256, max_num_batched_tokens=8192)
    cfg.update(kw)
    return Engine(EngineConfig(**cfg), p)


def prompt(n: int, rng: random.Random, prefix: list[int] | None = None) -> list[int]:
    head = list(prefix or [])[:n]
    return head + [rng.randrange(100, 8000) for _ in range(n - len(head))]


def run(e: Engine, arrivals: list[tuple[float, Request]], until_done=True, on_step=None) -> float:
    """Advance the engine through timed arrivals; returns the final engine time."""
    arrivals = sorted(arrivals, key=lambda x: x[0])
    t, i = 0.0, 0
    while i < len(arrivals) or e.has_unfinished():
        while i < len(arrivals) and arrivals[i][0] <= t:
            r = arrivals[i][1]
            r.arrival_time = arrivals[i][0]
            e.add_request(r)
            i += 1
        out = e.step(t)
        if out is None:
            t = arrivals[i][0] if i < len(arrivals) else t
            continue
        if on_step:
            on_step(out)
        t = out.end
    return t


def ttft_single(p, n_prompt: int) -> float:
    e = engine(p)
    r = Request("r", prompt(n_prompt, random.Random(n_prompt)), 1, 0.0)
    run(e, [(0.0, r)])
    return r.first_token_time - r.arrival_time


def itl_at_batch(p, batch: int, ctx: int = 1024) -> float:
    e = engine(p, max_num_seqs=max(256, batch))
    rng = random.Random(batch)
    reqs = [Request(f"r{i}", prompt(ctx, rng), 64, 0.0) for i in range(batch)]
    run(e, [(0.0, r) for r in reqs])
    # steady-state decode gaps only (skip the first tokens, produced while others still prefill)
    gaps = [b - a for r in reqs for a, b in zip(r.token_times[8:], r.token_times[9:])]
    return statistics.median(gaps)


def load_test(p, rate: float, n: int = 300, n_in: int = 1000, n_out: int = 200, seed: int = 1):
    rng = random.Random(seed)
    e = engine(p)
    t, arr = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        arr.append((t, Request(f"r{i}", prompt(n_in, rng), n_out, t)))
    end = run(e, arr)
    reqs = [r for _, r in arr]
    ttfts = sorted(r.first_token_time - r.arrival_time for r in reqs)
    itls = [b - a for r in reqs for a, b in zip(r.token_times, r.token_times[1:])]
    first = min(r.arrival_time for r in reqs)
    return {"ttft_p50": ttfts[len(ttfts) // 2], "ttft_p90": ttfts[int(len(ttfts) * 0.9)],
            "itl_mean": statistics.mean(itls), "out_tok_s": n * n_out / (end - first)}


def max_throughput(p, n_in=1000, n_out=200, n=600) -> float:
    rng = random.Random(7)
    e = engine(p)
    reqs = [Request(f"r{i}", prompt(n_in, rng), n_out, 0.0) for i in range(n)]
    end = run(e, [(0.0, r) for r in reqs])
    return n * n_out / end


def interference(p) -> tuple[float, float]:
    """16 decodes running; an 8k-token prompt arrives. Decode ITL before vs during its chunked prefill."""
    e = engine(p, max_num_batched_tokens=2048)
    rng = random.Random(3)
    decs = [Request(f"d{i}", prompt(512, rng), 400, 0.0) for i in range(16)]
    big = Request("big", prompt(8192, rng), 1, 0.0)
    gaps_before, gaps_during = [], []

    run(e, [(0.0, r) for r in decs] + [(1.0, big)])
    for r in decs:
        for a, b in zip(r.token_times, r.token_times[1:]):
            if 0.5 < a and b < 1.0:
                gaps_before.append(b - a)
            elif 1.0 <= a and b <= big.first_token_time:
                gaps_during.append(b - a)
    return statistics.mean(gaps_before), statistics.mean(gaps_during)


def prefix_share(p, n_prompt=4096) -> list[tuple[float, float]]:
    out = []
    rng = random.Random(5)
    shared = prompt(n_prompt, rng)
    for share in (0.0, 0.25, 0.5, 0.75, 0.95):
        e = engine(p)
        warm = Request("warm", shared[:int(n_prompt * share)] + [1] if share else [1, 2], 1, 0.0)
        run(e, [(0.0, warm)])
        r = Request("r", shared[:int(n_prompt * share)] + prompt(n_prompt - int(n_prompt * share), rng), 1, 0.0)
        t0 = 10.0
        run(e, [(t0, r)])
        out.append((share, r.first_token_time - r.arrival_time))
    return out


def kv_exhaustion(p) -> dict:
    """KV for ~4 requests of 2,000 tokens: the rest wait in the queue."""
    e = engine(p, num_gpu_blocks=520)
    rng = random.Random(9)
    reqs = [Request(f"r{i}", prompt(1800, rng), 200, 0.0) for i in range(16)]
    peak = {"waiting": 0, "running": 0}

    def on_step(out):
        peak["waiting"] = max(peak["waiting"], len(e.waiting))
        peak["running"] = max(peak["running"], len(e.running))
    run(e, [(0.0, r) for r in reqs], on_step=on_step)
    q = sorted(r.first_scheduled_time - r.arrival_time for r in reqs)
    return {"peak_running": peak["running"], "peak_waiting": peak["waiting"], "queue_p50": q[len(q) // 2],
            "queue_max": q[-1], "preemptions": e.num_preemptions_total}


def pd_decode_ttft(p, n_prompt=4096) -> tuple[float, float]:
    """Decode-side TTFT when the prompt's KV is pulled from a prefill pod instead of computed."""
    e = engine(p)
    r = Request("r", prompt(n_prompt, random.Random(11)), 1, 0.0, remote_prefill={"remote_block_ids": [0]})
    e.add_request(r)
    t = 0.0
    while e.has_unfinished():
        out = e.step(t)
        for pulled in e.take_pending_loads():          # the transport: modelled network time
            e.finish_remote_load(pulled.request_id, True, t + p.transfer_time(pulled.load_tokens))
        t = out.end if out else max(t, e.next_wakeup() or t)
    return r.first_token_time - r.arrival_time, ttft_single(p, n_prompt)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", nargs="+", default=sorted(profiles.PROFILES))
    args = ap.parse_args()
    for name in args.profile:
        p = profiles.get(name)
        print(f"\n== {name}  (fixed {p.fixed_s * 1e3:.1f} ms, prefill {p.prefill_token_s * 1e6:.1f} us/token, "
              f"decode {p.decode_seq_s * 1e6:.1f} us/seq, KV read {p.kv_read_token_s * 1e9:.1f} ns/token)")
        print("TTFT, one request:  " + "  ".join(f"{n} tok {ttft_single(p, n) * 1e3:.1f} ms"
                                                 for n in (128, 1024, 4096, 16384)))
        print("ITL by batch (1k ctx): " + "  ".join(f"b{b} {itl_at_batch(p, b) * 1e3:.1f} ms"
                                                   for b in (1, 8, 32, 64, 128, 256)))
        mt = max_throughput(p)
        print(f"max output throughput (1000 in / 200 out, 600 requests at once): {mt:,.0f} tok/s")
        for frac in (0.25, 0.5, 0.8):
            rate = frac * mt / 200
            r = load_test(p, rate)
            print(f"load {rate:5.1f} req/s ({frac:.0%} of max): TTFT p50 {r['ttft_p50'] * 1e3:.0f} ms, "
                  f"p90 {r['ttft_p90'] * 1e3:.0f} ms, ITL mean {r['itl_mean'] * 1e3:.1f} ms, "
                  f"{r['out_tok_s']:,.0f} out tok/s")
        before, during = interference(p)
        print(f"interference: 16 decodes ITL {before * 1e3:.1f} ms -> {during * 1e3:.1f} ms while an 8k prompt "
              f"prefills beside them ({during / before:.1f}x)")
        print("prefix share -> TTFT (4k prompt): " + "  ".join(f"{s:.0%} {t * 1e3:.0f} ms"
                                                             for s, t in prefix_share(p)))
        pd, local = pd_decode_ttft(p)
        print(f"P/D: decode TTFT for a 4k prompt pulled over the network {pd * 1e3:.1f} ms "
              f"(vs {local * 1e3:.0f} ms prefilling it locally)")
        k = kv_exhaustion(p)
        print(f"KV exhaustion (520 blocks, 16 x 2k-token requests): at most {k['peak_running']} running, "
              f"{k['peak_waiting']} waiting; queue time p50 {k['queue_p50']:.2f} s, max {k['queue_max']:.2f} s, "
              f"{k['preemptions']} preemptions")


if __name__ == "__main__":
    main()
