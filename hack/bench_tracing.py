"""What --tracing costs per request, measured in-process: request control's decide() + done() (parse,
schedule on the default profile over 8 endpoints, the spans) with tracing off, on with nothing
sampled, on at upstream's default sampling (10%), and on with every request sampled.

The modes run interleaved in one process, in short rounds, and the best round of each counts: on a
shared, noisy machine the same noise hits every mode alike. The export thread is held back and the
spans a round queued are exported inside that round, so each figure is the whole CPU cost: with
`--exporter otlp` the spans are encoded as the OTLP exporter sends them (no network); with `drop`
they are dropped at export (the request path alone).

    .venv/bin/python hack/bench_tracing.py [--rounds 15] [--requests 2000] [--exporter otlp|drop]
"""
from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--exporter", choices=("otlp", "drop"), default="otlp")
    a = ap.parse_args()
    os.environ.update(OTEL_BSP_SCHEDULE_DELAY="100000000", OTEL_BSP_MAX_QUEUE_SIZE="100000000",
                      OTEL_BSP_MAX_EXPORT_BATCH_SIZE="512")
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from epp import tracing
    from epp.datalayer.endpoint import Endpoint, now
    from epp.datalayer.store import EndpointStore
    from epp.requestcontrol.director import Director
    from epp.scheduling.scheduler import default_scheduler

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from epp import otlp

    class Exporter(SpanExporter):
        """What epp.otlp.RecordsExporter does with a batch, up to the network: bytes, parsed once."""
        takes_records = a.exporter == "otlp"

        def export(self, spans):
            if self.takes_records:
                ExportTraceServiceRequest.FromString(otlp.encode(spans, {"service.name": "llm-d-epp"}, "0"))
            return SpanExportResult.SUCCESS

    tracing.setup(exporter=Exporter())
    store = EndpointStore()
    eps = [Endpoint(f"p{i}", f"10.0.0.{i + 1}:8000") for i in range(8)]
    for ep in eps:
        ep.metrics.updated = now() + 3600    # fresh for the whole run
    store.replace(eps)
    director = Director(store, default_scheduler())
    bodies = [f'{{"model": "m", "prompt": "request {i} {"x" * 200}"}}'.encode() for i in range(64)]
    headers = {":method": "POST", ":path": "/v1/completions", "x-request-id": "r"}
    modes = {"tracing off": None, "on, none sampled": 0.0, "on, 10% sampled (default)": 0.1,
             "on, all sampled": 1.0}
    best = dict.fromkeys(modes, float("inf"))
    for rnd in range(a.rounds + 1):
        for name, ratio in modes.items():
            tracing.on = ratio is not None
            tracing._ratio_bound = round((ratio or 0.0) * (1 << 64))
            t = time.perf_counter()
            for i in range(a.requests):
                director.done(director.decide(headers, "/v1/completions", bodies[i % 64], None), 200)
            tracing.force_flush()
            per = (time.perf_counter() - t) / a.requests * 1e6
            if rnd:                            # round 0 warms up
                best[name] = min(best[name], per)
    tracing.shutdown()
    off = best["tracing off"]
    print(f"exporter: {a.exporter}; best of {a.rounds} rounds of {a.requests} requests")
    for name, per in best.items():
        print(f"{name:28s} {per:7.1f} µs/request  (+{per - off:.1f})")


if __name__ == "__main__":
    main()
