"""Flow control's Prometheus families, upstream's names: `llm_d_epp_flow_control_*`, and the six that
upstream still also writes under the deprecated `inference_extension_` prefix (GIE's names). Series
appear once flow control records them, i.e. only with the gate on. Children are looked up once per
label set (the request path must not pay prometheus_client's labels() per request); the fairness_id
label is capped at 1000 values, later ids share `other`."""
from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from ..histogram import Histogram

LLMD = "llm_d_epp_"
DEPRECATED = "inference_extension_"
MAX_FAIRNESS_IDS = 1000
OVERFLOW = "other"

_QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_FAST_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
_CONFIRM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_MODEL = ["model_name", "target_model_name"]
_QUEUE_LABELS = ["fairness_id", "priority", "inference_pool", *_MODEL]


class _Both:
    """One family under both prefixes; children of a label set are fetched together, once."""

    def __init__(self, make, name: str, help_: str, labels: list[str], deprecated: bool, **kw) -> None:
        self.families = [make(LLMD + name, help_, labels, **kw)]
        if deprecated:
            self.families.append(make(DEPRECATED + name, f"[Deprecated: Use {LLMD}{name}] {help_}", labels, **kw))
        self._children: dict[tuple, tuple] = {}

    def labels(self, *values: str) -> tuple:
        c = self._children.get(values)
        if c is None:
            c = self._children[values] = tuple(f.labels(*values) for f in self.families)
        return c

    def remove(self, *values: str) -> None:
        if self._children.pop(values, None) is not None:
            for f in self.families:
                try:
                    f.remove(*values)
                except KeyError:
                    pass


class FlowMetrics:
    def __init__(self, pool: str = "", registry: CollectorRegistry = REGISTRY) -> None:
        self.pool = pool
        r = registry

        def hist(name, help_, labels, buckets):
            return Histogram(name, help_, labels, buckets=buckets, registry=r)

        def gauge(name, help_, labels):
            return Gauge(name, help_, labels, registry=r)

        def counter(name, help_, labels):
            return Counter(name, help_, labels, registry=r)

        self.queue_duration = _Both(
            hist, "flow_control_request_queue_duration_seconds",
            "Distribution of total time requests spend in the Flow Control layer (from enqueue to final outcome).",
            ["fairness_id", "priority", "outcome", "inference_pool", *_MODEL], True, buckets=_QUEUE_BUCKETS)
        self.enqueue_duration = _Both(
            hist, "flow_control_request_enqueue_duration_seconds",
            "Distribution of time taken to enqueue requests into the Flow Control layer.",
            ["fairness_id", "priority", "outcome"], True, buckets=_FAST_BUCKETS)
        self.cycle_duration = _Both(
            hist, "flow_control_dispatch_cycle_duration_seconds",
            "Distribution of time taken for each internal dispatch cycle in the Flow Control layer.",
            [], True, buckets=_FAST_BUCKETS)
        self.queue_size = _Both(gauge, "flow_control_queue_size",
                                "Current number of requests actively held in the Flow Control queue.",
                                _QUEUE_LABELS, True)
        self.queue_bytes = _Both(gauge, "flow_control_queue_bytes",
                                 "Current total size in bytes of requests actively held in the Flow Control queue.",
                                 _QUEUE_LABELS, True)
        self.saturation = _Both(
            gauge, "flow_control_pool_saturation",
            "Pool saturation signal gating Flow Control dispatch, per stage ('prefill', 'decode'; 'effective' is "
            "the larger and gates). 1.0 is the gating set point; an empty pool reads 1.0.",
            ["inference_pool", "stage"], True)
        self.stale = _Both(gauge, "flow_control_stale_endpoints",
                           "Candidate endpoints whose metrics are missing or stale as of the most recent saturation "
                           "evaluation (scored as fully saturated).", ["detector"], False)
        self.band_util_requests = _Both(gauge, "flow_control_capacity_utilization_requests",
                                        "Fraction of a priority band's request capacity currently occupied.",
                                        ["priority", "inference_pool"], False)
        self.band_util_bytes = _Both(gauge, "flow_control_capacity_utilization_bytes",
                                     "Fraction of a priority band's byte capacity currently occupied.",
                                     ["priority", "inference_pool"], False)
        self.global_util_requests = _Both(gauge, "flow_control_global_capacity_utilization_requests",
                                          "Fraction of the global request capacity currently occupied (only with "
                                          "a global cap).", ["inference_pool"], False)
        self.global_util_bytes = _Both(gauge, "flow_control_global_capacity_utilization_bytes",
                                       "Fraction of the global byte capacity currently occupied (only with a "
                                       "global cap).", ["inference_pool"], False)
        self.requests = _Both(counter, "flow_control_requests_total",
                              "Total number of requests processed by the Flow Control layer.",
                              ["outcome", "priority", "inference_pool"], False)
        self.revocations_issued = _Both(counter, "flow_control_revocations_issued_total",
                                        "In-flight eviction revocations issued, by the demand band's priority.",
                                        ["priority", "inference_pool"], False)
        self.revocations = _Both(counter, "flow_control_revocations_total",
                                 "In-flight eviction revocations by terminal outcome (confirmed, timed_out).",
                                 ["outcome", "inference_pool"], False)
        self.reclaim_target = _Both(gauge, "flow_control_reclaim_target",
                                    "Last computed reclamation deficit, in saturation-gauge units.",
                                    ["inference_pool"], False)
        self.pending_reclaim = _Both(gauge, "flow_control_pending_reclaim",
                                     "Sum of outstanding and cooling pending-reclaim debits, in saturation-gauge units.",
                                     ["inference_pool"], False)
        self.confirmation = _Both(hist, "flow_control_revocation_confirmation_seconds",
                                  "Time from revocation issue to confirmed stream termination.", ["inference_pool"],
                                  False, buckets=_CONFIRM_BUCKETS)
        self._fairness: set[str] = set()

    def fairness(self, fid: str) -> str:
        """The fairness_id label value: capped at MAX_FAIRNESS_IDS distinct values."""
        if fid in self._fairness:
            return fid
        if len(self._fairness) < MAX_FAIRNESS_IDS:
            self._fairness.add(fid)
            return fid
        return OVERFLOW

    # ---------------------------------------------------------------- helpers the controller calls

    def queued(self, fid: str, priority: str, model: str, target: str, size: int, sign: int) -> None:
        for g in self.queue_size.labels(fid, priority, self.pool, model, target):
            g.inc(sign)
        for g in self.queue_bytes.labels(fid, priority, self.pool, model, target):
            g.inc(sign * size)

    def finished(self, fid: str, priority: str, model: str, target: str, outcome: str, seconds: float) -> None:
        for c in self.requests.labels(outcome, priority, self.pool):
            c.inc()
        for h in self.queue_duration.labels(fid, priority, outcome, self.pool, model, target):
            h.observe(seconds)

    def enqueued(self, fid: str, priority: str, outcome: str, seconds: float) -> None:
        for h in self.enqueue_duration.labels(fid, priority, outcome):
            h.observe(seconds)

    def cycle(self, seconds: float) -> None:
        for h in self.cycle_duration.labels():
            h.observe(seconds)

    def set_saturation(self, stage: str, value: float | None) -> None:
        if value is None:
            self.saturation.remove(self.pool, stage)
        else:
            for g in self.saturation.labels(self.pool, stage):
                g.set(value)

    def set_gauge(self, family: _Both, value: float, *labels: str) -> None:
        for g in family.labels(*labels):
            g.set(value)
