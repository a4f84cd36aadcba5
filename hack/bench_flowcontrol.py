#!/usr/bin/env python3
"""What flow control costs a request that is not queued: Director.decide + done in process, the
default scheduling profile over N endpoints, with the flowControl gate off and on (the pool not
saturated, so every request passes at once). Runs alternate off/on so machine noise hits both.

    .venv/bin/python hack/bench_flowcontrol.py [--endpoints 8] [--requests 3000] [--reps 7]

Prints the median microseconds per request of each and the difference."""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import orjson
from prometheus_client import CollectorRegistry

from epp.datalayer.endpoint import Endpoint, Metrics, now
from epp.datalayer.store import EndpointStore
from epp.flowcontrol.config import decode
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.metrics import FlowMetrics
from epp.metrics import EPPMetrics
from epp.requestcontrol.admission import FlowAdmission
from epp.requestcontrol.director import Director
from epp.scheduling.config import DEFAULT_CONFIG, default_saturation_detector, load
from epp.scheduling.scheduler import from_config


def director(n: int, gate: bool) -> Director:
    store = EndpointStore()
    eps = []
    for i in range(n):
        ep = Endpoint(name=f"pod-{i}", address=f"10.0.{i // 250}.{i % 250}:8000")
        ep.metrics = Metrics(waiting=1, kv_usage=0.3, updated=now() + 1e6)   # fresh for the whole run
        eps.append(ep)
    store.replace(eps)
    metrics = EPPMetrics(CollectorRegistry())
    detector = default_saturation_detector(2.0)
    admission = None
    if gate:
        fc = FlowController(decode(None, {}), detector, store.snapshot, FlowMetrics("bench", CollectorRegistry()))
        admission = FlowAdmission(fc)
    return Director(store, from_config(load(DEFAULT_CONFIG), metrics), metrics, saturation=detector,
                    admission=admission)


async def per_request_us(d: Director, n: int) -> float:
    headers = {":method": "POST", ":path": "/v1/completions", "x-request-id": "r"}
    t = time.perf_counter()
    for i in range(n):
        body = orjson.dumps({"model": "m", "prompt": f"request {i}: " + "tell me a story " * 50})
        dec = d.decide(headers, "/v1/completions", body, None)
        d.done(dec, 200)
    return (time.perf_counter() - t) / n * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", type=int, default=8)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    dirs = {False: director(a.endpoints, False), True: director(a.endpoints, True)}
    await per_request_us(dirs[False], 200)   # warm both
    await per_request_us(dirs[True], 200)
    runs: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(a.reps):
        for gate in ((False, True) if rep % 2 == 0 else (True, False)):
            runs[gate].append(await per_request_us(dirs[gate], a.requests))
    off, on = statistics.median(runs[False]), statistics.median(runs[True])
    print(f"{a.endpoints} endpoints, median of {a.reps} x {a.requests} requests: gate off {off:.1f} us, "
          f"gate on {on:.1f} us per decide+done ({on - off:+.1f} us)")


if __name__ == "__main__":
    asyncio.run(main())
