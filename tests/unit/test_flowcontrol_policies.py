"""The flow-control policy plugins and the in-flight load they read, each against its docstring."""
import math

from epp.datalayer.endpoint import Endpoint
from epp.flowcontrol.config import BandConfig
from epp.flowcontrol.queues import Band, FlowItem
from epp.scheduling.config import create_default, instantiate
from epp.scheduling.types import LLMRequest, ProfileResult, SchedulingResult


class _Reg:
    def added(self, item): pass

    def removed(self, item): pass


def band(fairness="global-strict-fairness-policy", ordering="fcfs-ordering-policy") -> Band:
    cfg = BandConfig(0, 100, 10**9, create_default(fairness), create_default(ordering))
    return Band(cfg, _Reg(), 0.0)


def put(b: Band, fid: str, t: float, seq: int, ttl: float = 60.0) -> FlowItem:
    item = FlowItem(f"{fid}-{seq}", fid, 0, 1, t, ttl, seq)
    b.flow_for(fid, t).push(item, t)
    return item


def test_global_strict_serves_the_oldest_head_across_flows():
    b = band()
    put(b, "a", 2.0, 2)
    put(b, "b", 1.0, 1)
    put(b, "c", 3.0, 3)
    assert b.cfg.fairness.pick_flow(b, b.state).fairness_id == "b"


def test_round_robin_turns_through_sorted_flows_skipping_empty_ones():
    b = band("round-robin-fairness-policy")
    for i, fid in enumerate(["c", "a", "b", "a", "c"]):
        put(b, fid, float(i), i)
    b.flow_for("idle", 0.0)          # registered, nothing queued
    picks = []
    for _ in range(5):
        f = b.cfg.fairness.pick_flow(b, b.state)
        picks.append(f.fairness_id)
        f.pop_head(0.0)
    assert picks == ["a", "b", "c", "a", "c"]
    assert b.cfg.fairness.pick_flow(b, b.state) is None


def test_edf_puts_items_without_a_ttl_last_and_breaks_ties_fcfs():
    edf = create_default("edf-ordering-policy")
    mk = lambda t, ttl, s: FlowItem("x", "f", 0, 1, t, ttl, s)  # noqa: E731
    keys = sorted([(edf.order_key(mk(0.0, 0, 1)), "no-ttl"), (edf.order_key(mk(5.0, 1.0, 2)), "due-6"),
                   (edf.order_key(mk(1.0, 10.0, 3)), "due-11"), (edf.order_key(mk(2.0, 4.0, 4)), "due-6-later")])
    assert [k[1] for k in keys] == ["due-6-later", "due-6", "due-11", "no-ttl"]
    assert edf.order_key(mk(0.0, 0, 1))[0] == math.inf


def test_priority_holdback_by_rank_and_by_value():
    rank = instantiate("priority-holdback-policy", "h", {"minCeiling": 0.4}, "t")
    assert rank.compute_limits(0.5, [10, 5, 0]) == [1.0, 0.7, 0.4]
    assert rank.compute_limits(0.5, [3]) == [1.0]
    value = instantiate("priority-holdback-policy", "h", {"minCeiling": 0.2, "maxCeiling": 0.8, "domain": "value"}, "t")
    assert [round(c, 6) for c in value.compute_limits(0.5, [10, 8, 0])] == [0.8, 0.68, 0.2]


def test_static_threshold():
    p = instantiate("static-usage-limit-policy", "s", {"threshold": 0.8}, "t")
    assert p.compute_limits(0.1, [1, 0, -1]) == [0.8, 0.8, 0.8]


def _req(prompt: bytes = b"x" * 400, stream: bool = False, body=None) -> LLMRequest:
    return LLMRequest("r", "m", "m", "completions", prompt=prompt, body=body or {}, stream=stream)


def _result(*eps) -> SchedulingResult:
    return SchedulingResult({"default": ProfileResult(list(eps))}, "default")


def test_concurrency_detector_modes_and_filter():
    prod = create_default("inflight-load-producer")
    det = instantiate("concurrency-detector", "c", {"maxConcurrency": 2, "maxTokenConcurrency": 400}, "t")
    det.bind({"inflight-load-producer": prod})
    a, b = Endpoint("a", "10.0.0.1:1"), Endpoint("b", "10.0.0.2:1")
    for _ in range(2):
        prod.pre_request({}, _req(), _result(a))
    assert det.saturation([a, b]) == 0.5 and det.saturation([a]) == 1.0 and det.saturation([]) == 1.0
    assert det.filter({}, None, [a, b]) == [b]
    tok = instantiate("concurrency-detector", "c", {"concurrencyMode": "tokens", "maxTokenConcurrency": 400}, "t")
    tok.bind({"inflight-load-producer": prod})
    assert tok.saturation([a, b]) == 200 / 800
    hyb = instantiate("concurrency-detector", "c", {"concurrencyMode": "hybrid", "maxConcurrency": 4,
                                                    "maxTokenConcurrency": 100}, "t")
    hyb.bind({"inflight-load-producer": prod})
    assert hyb.saturation([a, b]) == (max(2 / 4, 200 / 100) + 0) / 2
    head = instantiate("concurrency-detector", "c", {"maxConcurrency": 2, "headroom": 0.5}, "t")
    head.bind({"inflight-load-producer": prod})
    assert head.filter({}, None, [a, b]) == [a, b]       # limit 3


def test_utilization_detector_counts_stale_endpoints():
    from epp.datalayer.endpoint import Metrics, now
    det = create_default("utilization-detector")
    fresh, stale = Endpoint("a", "10.0.0.1:1"), Endpoint("b", "10.0.0.2:1")
    fresh.metrics = Metrics(waiting=5, kv_usage=0.4, updated=now())
    assert det.saturation([fresh, stale]) == (1.0 + 1.0) / 2
    assert det.stale_endpoints == 1
