#!/usr/bin/env python3
"""What recording decisions costs each request, in process: Director.decide + response_started + the
answer's usage + done, in a loop, on 8 endpoints with fresh metrics and 16 KB prompts sharing prefixes.
Timed three ways: no observer at all, the observer epp always has (the prediction-accuracy metric;
the web view off) and with the web view on (--ui: every decision recorded with its scores).

    .venv/bin/python hack/bench_observe.py [--requests 20000] [--prompt-kb 16] [--endpoints 8]

Prints CPU µs per request (the best of --rounds interleaved rounds) for each case and the difference to
the first.
"""
from __future__ import annotations

import argparse
import gc
import json
import random
import time

from prometheus_client import CollectorRegistry

from epp.datalayer.endpoint import Endpoint, Metrics, now
from epp.datalayer.store import EndpointStore
from epp.metrics import EPPMetrics
from epp.requestcontrol.director import Director
from epp.scheduling.scheduler import default_scheduler

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


def store_of(n: int) -> EndpointStore:
    rng = random.Random(2)
    s = EndpointStore()
    s.replace([Endpoint(name=f"pod-{i}", address=f"10.0.0.{i + 1}:8000") for i in range(n)])
    for ep in s.snapshot():
        ep.metrics = Metrics(waiting=rng.randint(0, 4), running=rng.randint(0, 20), kv_usage=rng.random() * 0.6,
                             updated=now() + 1e9)   # fresh for the whole run
    return s


def bodies(n: int, kb: int) -> list[bytes]:
    rng = random.Random(1)
    systems = [" ".join(rng.choice(WORDS) for _ in range(kb * 1024 // 6)) for _ in range(8)]
    return [json.dumps({"model": "m", "prompt": rng.choice(systems) + f" question {i}", "max_tokens": 8}).encode()
            for i in range(n)]


ANSWER = json.dumps({"choices": [{"text": "ok"}], "usage": {"prompt_tokens": 4000, "completion_tokens": 8,
                                                             "prompt_tokens_details": {"cached_tokens": 3000}}}).encode()


def director(case: str, n_eps: int) -> Director:
    reg = CollectorRegistry()
    metrics = EPPMetrics(reg)
    store = store_of(n_eps)
    sched = default_scheduler(metrics)
    observer = None
    if case != "none":
        from epp.observe.observer import Observer
        observer = Observer(reg, record=(case == "ui"))
    return Director(store, sched, metrics, observe=observer) if observer else Director(store, sched, metrics)


def run(d: Director, reqs: list[bytes]) -> float:
    headers = {":path": "/v1/completions", ":method": "POST", "content-type": "application/json"}
    gc.collect()
    t = time.process_time()   # CPU time: the machine is shared, wall time would count the neighbours
    for body in reqs:
        dec = d.decide(headers, "/v1/completions", body, None)
        d.response_started(dec, 200, False)
        dec.usage.feed(ANSWER)
        d.done(dec, 200)
    return (time.process_time() - t) / len(reqs) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--prompt-kb", type=int, default=16)
    ap.add_argument("--endpoints", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args()
    reqs = bodies(a.requests, a.prompt_kb)
    try:
        import epp.observe.observer  # noqa: F401
        cases = ["none", "metric", "ui"]
    except ImportError:
        cases = ["none"]
    ds = {c: director(c, a.endpoints) for c in cases}
    for d in ds.values():
        run(d, reqs[: a.requests // 4])   # warm the prefix index
    times = {c: [] for c in cases}
    for _ in range(a.rounds):
        for c in cases:                    # interleaved: a busy neighbour slows every case alike
            times[c].append(run(ds[c], reqs))
    base = min(times["none"])
    print(f"{a.requests} requests x {a.rounds} rounds, {a.prompt_kb} KB prompts, {a.endpoints} endpoints")
    for c in cases:
        m = min(times[c])
        print(f"  {c:7} {m:7.1f} µs/request  ({m - base:+.1f} µs)")


if __name__ == "__main__":
    main()
