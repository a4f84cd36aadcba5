"""Endpoints (one model-server port each) and the metrics the scheduler reads from them."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Metrics:
    """The latest scrape of one endpoint. `updated` is a monotonic time; 0 means never scraped."""

    waiting: float = 0.0
    running: float = 0.0
    kv_usage: float = 0.0
    running_loras: tuple[str, ...] = ()
    waiting_loras: tuple[str, ...] = ()
    max_loras: int = 0
    block_size: int = 0
    num_gpu_blocks: int = 0
    updated: float = 0.0
    # custom metrics (core-metrics-extractor customMetrics): attribute key -> value; None when none configured
    attributes: dict[str, float] | None = None

    def fresh(self, now: float, staleness: float) -> bool:
        return self.updated > 0.0 and now - self.updated <= staleness


@dataclass(slots=True, eq=False)
class Endpoint:
    """A model-server endpoint. Identity is the address: a label change keeps the same object."""

    name: str
    address: str  # "ip:port", exactly what goes into the destination header
    labels: dict[str, str] = field(default_factory=dict)
    ready: bool = True
    metrics: Metrics = field(default_factory=Metrics)
    scrape_errors: int = 0
    namespace: str = "default"
    # EPP-side requests (and their estimated prompt tokens) in flight to this endpoint, kept by
    # request control: they move between scrapes
    in_flight: int = 0
    in_flight_tokens: int = 0

    @property
    def ip(self) -> str:
        return self.address.rsplit(":", 1)[0].strip("[]")

    @property
    def engine(self) -> str:
        labels = self.labels
        return (labels.get("llm-d.ai/engine-type") or labels.get("inference.networking.k8s.io/engine-type")
                or labels.get("engine", "vllm"))


def now() -> float:
    return time.monotonic()
