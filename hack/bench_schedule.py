#!/usr/bin/env python3
"""Cost of one scheduling decision, in process: a pool of N endpoints with live-looking metrics, a
shared-prefix workload (groups of requests sharing a long system prompt), and the scheduler from a
config file, timed per request (filters, scorers, picker, pre-request hooks: everything but parsing
and the transport). Also the approximate prefix index's memory: bytes per entry, by tracemalloc.

    .venv/bin/python hack/bench_schedule.py [--endpoints 64] [--prompt-tokens 16384] [--requests 3000]
                                            [--config config/default.yaml ...] [--tokenizer DIR]

Goal (scheduler issue): p99 < 1 ms at 64 endpoints, default profile, 16K-token prompts. Prints a
markdown table and writes out/bench_schedule.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import time
import tracemalloc

from epp.datalayer.endpoint import Endpoint, Metrics, now
from epp.metrics import EPPMetrics
from epp.requestcontrol.parse import parse_body
from epp.scheduling.config import load
from epp.scheduling.plugins.approx_prefix_cache_producer import ApproxPrefixCacheProducer
from epp.scheduling.scheduler import from_config
from epp.scheduling.types import LLMRequest
from prometheus_client import CollectorRegistry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega invoice ledger account refund policy customer order shipment").split()


def text(rng: random.Random, tokens: int) -> str:
    # ~4 bytes per token, as the approximate hashing assumes
    out, size = [], 0
    while size < tokens * 4:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def pool(n: int, rng: random.Random) -> list[Endpoint]:
    eps = []
    for i in range(n):
        ep = Endpoint(name=f"pod-{i}", address=f"10.0.{i // 250}.{i % 250 + 1}:8000")
        ep.metrics = Metrics(waiting=rng.randint(0, 6), running=rng.randint(0, 40), kv_usage=rng.random() * 0.8,
                             block_size=16, num_gpu_blocks=24_800, updated=now())
        eps.append(ep)
    return eps


def requests(n: int, prompt_tokens: int, groups: int, rng: random.Random) -> list[LLMRequest]:
    systems = [text(random.Random(g), int(prompt_tokens * 0.75)) for g in range(groups)]
    out = []
    for i in range(n):
        body = json.dumps({"model": "llama", "prompt": rng.choice(systems) + " " + text(rng, prompt_tokens // 4)})
        parsed, model, prompt, stream, salt = parse_body("completions", body.encode())
        out.append(LLMRequest(request_id=str(i), model=model, target_model=model, api="completions", prompt=prompt,
                              body=parsed, cache_salt=salt))
    return out


def bench(config_path: str, eps, reqs, tokenizer: str | None) -> dict:
    cfg_text = open(config_path).read()
    if tokenizer:
        cfg_text = cfg_text.replace("plugins:\n", f"plugins:\n- type: token-producer\n  parameters: {{local: {{path: {tokenizer}}}}}\n", 1)
    sched = from_config(load(cfg_text, config_path), EPPMetrics(CollectorRegistry()))
    # warm the index with one pass, then time a second pass over the same traffic mix
    for r in reqs[: len(reqs) // 3]:
        sched.schedule(r, eps)
    gc.collect()
    times = []
    for r in reqs:
        t = time.perf_counter()
        sched.schedule(r, eps)
        times.append(time.perf_counter() - t)
    times.sort()
    producers = sched.plugins_of(ApproxPrefixCacheProducer)
    entries = sum(len(p.index) for p in producers)
    return {"config": os.path.relpath(config_path, ROOT), "tokenizer": bool(tokenizer),
            "p50_us": times[len(times) // 2] * 1e6, "p99_us": times[int(len(times) * 0.99)] * 1e6,
            "mean_us": statistics.fmean(times) * 1e6, "index_entries": entries,
            "hit_ratio": (sum(p.hit_blocks for p in producers) / max(1, sum(p.total_blocks for p in producers)))}


def index_memory(entries_per_endpoint: int, endpoints: int) -> float:
    """Bytes per index entry: a full per-endpoint LRU, measured with tracemalloc."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    p = ApproxPrefixCacheProducer(lruCapacityPerServer=entries_per_endpoint)
    rng = random.Random(3)
    for e in range(endpoints):
        keys = [rng.getrandbits(64) for _ in range(entries_per_endpoint)]
        for i in range(0, len(keys), 256):
            p.index.add(f"10.0.0.{e}:8000", keys[i:i + 256])
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return used / len(p.index)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoints", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=16384)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--groups", type=int, default=32)
    ap.add_argument("--config", nargs="+", default=[os.path.join(ROOT, "config", c) for c in
                                                     ("default.yaml", "approx-capped.yaml", "prefix-heavy.yaml", "load-only.yaml")])
    ap.add_argument("--tokenizer", default=None, help="also run the default config with this tokenizer.json dir")
    args = ap.parse_args()
    rng = random.Random(1)
    eps = pool(args.endpoints, rng)
    reqs = requests(args.requests, args.prompt_tokens, args.groups, rng)
    rows = [bench(c, eps, reqs, None) for c in args.config]
    if args.tokenizer:
        rows.append(bench(args.config[0], eps, reqs[: max(300, args.requests // 5)], args.tokenizer))
    per_entry = index_memory(31_250, 8)
    print(f"\n{args.endpoints} endpoints, {args.prompt_tokens}-token prompts, {args.groups} shared prefixes, "
          f"{args.requests} requests\n")
    print("| config | tokenizer | p50 µs | p99 µs | mean µs | index entries | prefix hit ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {'local' if r['tokenizer'] else 'estimate'} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | "
              f"{r['mean_us']:.0f} | {r['index_entries']:,} | {r['hit_ratio']:.2f} |")
    print(f"\nprefix index: {per_entry:.0f} bytes per entry (8 endpoints x 31,250 blocks, tracemalloc); "
          f"at the default capacity that is {per_entry * 31_250 / 2**20:.1f} MiB per endpoint")
    os.makedirs(os.path.join(ROOT, "out"), exist_ok=True)
    with open(os.path.join(ROOT, "out", "bench_schedule.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows, "index_bytes_per_entry": per_entry}, f, indent=1)


if __name__ == "__main__":
    main()
