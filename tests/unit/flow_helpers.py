"""A flow controller over a fixed pool and a detector whose reading the test sets."""
from __future__ import annotations

from prometheus_client import CollectorRegistry

from epp.datalayer.endpoint import Endpoint
from epp.flowcontrol.config import decode
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.metrics import FlowMetrics
from epp.scheduling.config import load_all
from epp.scheduling.framework import SaturationDetector


class Dial(SaturationDetector):
    """Saturation is whatever the test says; an empty pool reads 1.0 as the real detectors do."""

    name = "dial"

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def saturation(self, endpoints) -> float:
        return self.value if endpoints else 1.0


def pool(n: int = 2) -> list[Endpoint]:
    return [Endpoint(name=f"pod-{i}", address=f"10.0.0.{i}:8000") for i in range(n)]


def controller(section: dict | None = None, sat: float = 0.0, endpoints=None, plugins=None, grace: float = 0.5):
    load_all()
    cfg = decode(section, plugins or {})
    dial = Dial(sat)
    eps = tuple(pool() if endpoints is None else endpoints)
    holder = {"eps": eps}
    reg = CollectorRegistry()
    fc = FlowController(cfg, dial, lambda: holder["eps"], FlowMetrics("pool", reg), eviction_grace=grace)
    fc.test_dial, fc.test_pool, fc.test_registry = dial, holder, reg
    return fc


def sample(fc, name: str, **labels) -> float | None:
    return fc.test_registry.get_sample_value(name, labels)
