#!/usr/bin/env python3
"""What a config costs per request in request control, in process: Director.decide on a 16 KB prompt
(shared-prefix traffic over N endpoints), then the response hooks a streamed answer triggers
(response_started, the first chunk, done). Configs are timed in alternation, round after round, so a
busy machine slows them alike; prints the median and p90 microseconds per request of each.

    .venv/bin/python -m hack.bench_decide [--config config/approx-capped.yaml --config config/predicted-latency.yaml]
                                          [--endpoints 8] [--prompt-kb 16] [--requests 2000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import orjson

from epp.datalayer.endpoint import Endpoint, Metrics, now
from epp.datalayer.store import EndpointStore
from epp.requestcontrol.director import Director
from epp.scheduling.config import load
from epp.scheduling.scheduler import from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = b'data: {"choices":[{"index":0,"text":" word"}]}\n\n'


def director(path: str, n: int) -> Director:
    from vllm_sim.tokenizer import (
        DEFAULT_DIR,  # precise configs: the sims' tokenizer (no KV events here)
    )
    cfg = load(open(path).read().replace("/etc/epp/tokenizer", DEFAULT_DIR), path)
    store = EndpointStore()
    eps = []
    for i in range(n):
        ep = Endpoint(name=f"pod-{i}", address=f"10.0.0.{i + 1}:8000")
        ep.metrics = Metrics(waiting=i % 3, running=4 + i % 5, kv_usage=0.1 * (i % 7), updated=now() + 1e6)
        eps.append(ep)
    store.replace(eps)
    return Director(store, from_config(cfg), staleness=1e9)


def bodies(kb: int, count: int, groups: int = 16) -> list[bytes]:
    rng = random.Random(1)
    words = [f"w{i}" for i in range(2000)]
    systems = [" ".join(rng.choice(words) for _ in range(kb * 1024 // 6)) for _ in range(groups)]
    out = []
    for i in range(count):
        prompt = (systems[i % groups] + " " + " ".join(rng.choice(words) for _ in range(40)))[:kb * 1024]
        out.append(orjson.dumps({"model": "m", "prompt": prompt, "stream": True}))
    return out


def one_round(d: Director, reqs: list[bytes]) -> list[float]:
    times = []
    for body in reqs:
        t = time.perf_counter()
        dec = d.decide({}, "/v1/completions", body, None)
        d.response_started(dec, 200, True)
        dec.usage.feed(CHUNK)
        d.done(dec, 200)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append")
    ap.add_argument("--endpoints", type=int, default=8)
    ap.add_argument("--prompt-kb", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    configs = a.config or [os.path.join(ROOT, "config", "approx-capped.yaml"),
                           os.path.join(ROOT, "config", "predicted-latency.yaml")]
    reqs = bodies(a.prompt_kb, a.requests)
    dirs = {c: director(c, a.endpoints) for c in configs}
    for d in dirs.values():
        one_round(d, reqs[:200])                      # warm: the prefix indexes hold the groups
    got: dict[str, list[float]] = {c: [] for c in configs}
    for _ in range(a.rounds):
        for c, d in dirs.items():
            got[c] += one_round(d, reqs)
    print(f"{a.endpoints} endpoints, {a.prompt_kb} KB prompts, {a.requests} x {a.rounds} requests per config "
          f"(decide + response hooks of a streamed answer)")
    for c, ts in got.items():
        ts.sort()
        print(f"  {os.path.relpath(c, ROOT)}: median {statistics.median(ts) * 1e6:.0f} us, "
              f"p90 {ts[int(len(ts) * 0.9)] * 1e6:.0f} us")


if __name__ == "__main__":
    main()
