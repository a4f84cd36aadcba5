"""What the deployment adds around the engines and the scheduler, as delays and intervals.

The planner models one deployment of epp: a client, Envoy with epp on ext_proc, the pods (decode pods
behind the P/D routing sidecar), epp scraping every pod's /metrics and, for precise prefix routing,
the pods' KV events over ZMQ. Network and proxy latencies are wall-clock figures of that deployment;
`time_scale` says how many engine seconds pass per wall second (1 in production; the wall-clock
benchmark runs its pods in slow motion, e.g. 0.125, so a millisecond of proxying there is 0.125 ms of
engine time). Scrape interval and staleness are in engine time, as the benchmark sets them.

Default latencies are this repository's own measurements (docs/benchmarks.md, "overhead": Envoy + epp
add ~2.3 ms p50 to a request and its answer, a plain local HTTP hop ~0.5 ms).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Stack:
    time_scale: float = 1.0          # engine seconds per wall second of the modelled deployment
    router_ms: float = 1.8           # wall: client -> Envoy -> epp (ext_proc, scheduling) -> Envoy -> pod
    return_ms: float = 0.5           # wall: pod -> Envoy -> client, per streamed chunk
    hop_ms: float = 0.5              # wall: one more local HTTP hop (sidecar <-> prefill pod, sidecar -> vLLM)
    kv_event_ms: float = 0.5         # wall: a KV-event batch from the engine step to epp's index
    scrape_interval_s: float = 0.05  # engine: epp --refresh-metrics-interval
    staleness_s: float = 2.0         # engine: epp --metrics-staleness-threshold

    def engine(self, wall_ms: float) -> float:
        """Engine seconds that `wall_ms` of wall time amount to."""
        return wall_ms / 1000.0 * self.time_scale

    def describe(self) -> dict:
        return asdict(self)
