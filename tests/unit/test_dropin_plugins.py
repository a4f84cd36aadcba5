"""The llm-d router v0.10 plugin types added for the drop-in, one test (or a few) each, as upstream's
README for the type describes it."""
import asyncio
import base64
import random

import pytest

from epp.datalayer.endpoint import now
from epp.datalayer.store import EndpointStore
from epp.scheduling.config import load
from epp.scheduling.framework import ResponseHeaders
from epp.scheduling.plugins import load_all
from epp.scheduling.plugins.approx_prefix_cache_producer import ApproxPrefixCacheProducer
from epp.scheduling.plugins.burst_prefix_cache_producer import BurstPrefixCacheProducer
from epp.scheduling.plugins.data_parallel_profile_handler import DataParallelProfileHandler
from epp.scheduling.plugins.destination_endpoint_served_verifier import DestinationEndpointServedVerifier
from epp.scheduling.plugins.endpoint_attribute_filter import EndpointAttributeFilter
from epp.scheduling.plugins.endpoint_attribute_scorer import EndpointAttributeScorer
from epp.scheduling.plugins.header_based_testing_filter import HeaderBasedTestingFilter
from epp.scheduling.plugins.header_label_affinity_scorer import HeaderLabelAffinityScorer
from epp.scheduling.plugins.header_profile_handler import HeaderProfileHandler
from epp.scheduling.plugins.inflight_load_producer import INFLIGHT_TOKENS, InFlightLoadProducer
from epp.scheduling.plugins.p2p_source_producer import P2PSourceProducer
from epp.scheduling.plugins.prefix_cache_affinity_filter import PrefixCacheAffinityFilter
from epp.scheduling.plugins.probabilistic_admitter import ProbabilisticAdmitter
from epp.scheduling.plugins.session_affinity_filter import SessionAffinityFilter
from epp.scheduling.plugins.session_id_producer import SessionIDProducer
from epp.scheduling.plugins.token_load_scorer import TokenLoadScorer
from epp.scheduling.plugins.utilization_filter import UtilizationFilter
from epp.scheduling.types import SERVED_ATTR, CycleState, LLMRequest, ProfileResult, SchedulingResult

from .helpers import endpoint

S = CycleState


def req(prompt=b"", headers=None, stream=False, body=None, rid="r", priority=0):
    return LLMRequest(request_id=rid, model="m", target_model="m", api="completions", prompt=prompt,
                      headers=headers or {}, body=body, stream=stream, priority=priority)


def result(*targets, profile="default", **more):
    profiles = {profile: ProfileResult(list(targets), candidates=list(targets))}
    profiles.update({k: ProfileResult(list(v), candidates=list(v)) for k, v in more.items()})
    return SchedulingResult(profiles, profile)


# ---------------------------------------------------------------- in-flight load and token load

def test_inflight_load_counts_uncached_tokens_and_releases_them():
    eps = [endpoint(1), endpoint(2)]
    approx = ApproxPrefixCacheProducer()
    p = InFlightLoadProducer()
    p.bind({"approx-prefix-cache-producer": approx})
    prompt = b"x" * 256 * 10                       # 10 blocks of 64 estimated tokens = 640 tokens
    st = S()
    approx.match_info(st, req(prompt))
    approx.pre_request(st, req(prompt), result(eps[0]))           # pod 1 now holds the prompt
    st = S()
    r = req(prompt + b"y" * 256 * 2, stream=True)                  # 12 blocks, 10 of them on pod 1
    assert p.uncached_tokens(st, r, eps[0]) == 2 * 64 and p.uncached_tokens(st, r, eps[1]) == 12 * 64
    gauge = INFLIGHT_TOKENS.labels("pod-1", "default", "inflight-load-producer", "default-flow", "0")._value
    before = gauge.get()     # the gauge is process-wide: other tests' pods may share the name
    p.pre_request(st, r, result(eps[0], prefill=[eps[1]]))
    assert p.load(eps[0].address) == (1, 128) and p.load(eps[1].address) == (1, 768)
    assert gauge.get() - before == 128
    assert not isinstance(p, ResponseHeaders)  # vLLM sends headers before any prefill: nothing is spent yet
    p.response_first_chunk(r, None, 0.05)     # the first token: prefill over, a streamed request's tokens spent
    assert p.load(eps[0].address) == (1, 0) and p.load(eps[1].address) == (0, 0)
    assert gauge.get() == before
    p.response_complete(r, None, 200)
    assert p.load(eps[0].address) == (0, 0)
    p.response_complete(r, None, 200)          # once only
    assert p.load(eps[0].address) == (0, 0)


def test_inflight_output_estimate_and_non_streaming_release():
    ep = endpoint(1)
    p = InFlightLoadProducer(addEstimatedOutputTokens=True, outputRatio=1.5, maxEstimatedOutputTokens=500)
    p.bind({})
    r = req(b"z" * 400, body={"max_tokens": 1000})              # 100 tokens in, min(150, 1000, 500) out
    p.pre_request(S(), r, result(ep))
    assert p.load(ep.address) == (1, 250)
    p.response_first_chunk(r, None, 0.05)                          # with the estimate: kept until the end
    assert p.load(ep.address) == (1, 250)
    r2 = req(b"z" * 400, body={"max_tokens": 20}, rid="r2")
    p.pre_request(S(), r2, result(ep))
    assert p.load(ep.address) == (2, 370)                          # client cap 20 < 150
    p.endpoints_removed([ep.address])
    assert p.load(ep.address) == (0, 0)
    p.response_complete(r2, None, 200)                             # the endpoint's counts went with it
    assert p.load(ep.address) == (0, 0)
    with pytest.raises(ValueError, match="outputRatio"):
        InFlightLoadProducer(outputRatio=-1)


def test_token_load_scorer_formula():
    eps = [endpoint(1), endpoint(2), endpoint(3)]
    p = InFlightLoadProducer()
    p.bind({})
    p._tokens.update({eps[0].address: 0, eps[1].address: 1000, eps[2].address: 10_000})
    s = TokenLoadScorer(queueThresholdTokens=2000)
    s.bind({"inflight-load-producer": p})
    r = req(b"q" * 400)                                            # this request: 100 uncached tokens everywhere
    assert s.score(S(), r, eps) == [1 - 100 / 2000, 1 - 1100 / 2000, 0.0]
    assert s.score(S(), req(b""), [eps[0]]) == [1.0]               # nothing in flight, nothing to add
    assert TokenLoadScorer(queueThresholdTokens=0).threshold == 4_194_304   # <= 0: the default


def test_affinity_filter_load_gate_reads_in_flight_tokens():
    eps = [endpoint(1), endpoint(2)]
    approx = ApproxPrefixCacheProducer()
    inflight = InFlightLoadProducer()
    f = PrefixCacheAffinityFilter(maxTTFTPenaltyMs=1000, peakPrefillThroughput=10_000)
    f.bind({"approx-prefix-cache-producer": approx, "inflight-load-producer": inflight})
    prompt = b"s" * 4096
    st = S()
    approx.match_info(st, req(prompt))
    approx.pre_request(st, req(prompt), result(eps[0]))
    assert f.filter(S(), req(prompt), eps) == [eps[0]]             # sticky
    inflight._tokens[eps[0].address] = 20_000                       # 2 s of prefill queued there: break away
    assert f.filter(S(), req(prompt), eps) == eps


# ---------------------------------------------------------------- filters

def test_utilization_filter_conditions_missing_metrics_and_fallback():
    eps = [endpoint(1, waiting=0), endpoint(2, waiting=3), endpoint(3, waiting=0, kv=0.95)]
    eps[1].metrics.running = 50
    f = UtilizationFilter(conditions=[{"metric": "running-requests", "maxValue": 40},
                                      {"metric": "kv-cache-utilization", "maxValue": 0.9}])
    assert f.filter(S(), req(), eps) == [eps[0]]
    busy = UtilizationFilter(conditions=[{"metric": "waiting-queue", "maxValue": 0}], fallbackOnEmpty=True)
    assert busy.filter(S(), req(), [eps[1]]) == [eps[1]]            # all dropped: fallback keeps them
    strict = UtilizationFilter(conditions=[{"metric": "waiting-queue", "maxValue": 0}])
    assert strict.filter(S(), req(), [eps[1]]) == []
    active = UtilizationFilter(conditions=[{"metric": "active-requests", "maxValue": 1}])
    p = InFlightLoadProducer()
    active.bind({"inflight-load-producer": p})
    p._requests[eps[0].address] = 2
    assert active.filter(S(), req(), eps[:2]) == [eps[1]]
    for bad, msg in (([], "at least one condition"), ([{"metric": "gpu", "maxValue": 1}], "metric must be one of"),
                     ([{"metric": "kv-cache-utilization", "maxValue": 2}], "maxValue must be in"),
                     ([{"metric": "waiting-queue"}], "requires maxValue")):
        with pytest.raises(ValueError, match=msg):
            UtilizationFilter(conditions=bad)


def test_session_affinity_filter_pins_and_never_empties():
    eps = [endpoint(1), endpoint(2)]
    f = SessionAffinityFilter()
    assert f.filter(S(), req(), eps) == eps                         # no session: all stay
    (header, token), = f.response_headers(req(), result(eps[1]), 200)
    assert header == "x-session-token" and base64.b64decode(token) == b"default/pod-2"
    assert f.filter(S(), req(headers={"x-session-token": token}), eps) == [eps[1]]
    assert f.filter(S(), req(headers={"x-session-token": token}), [eps[0]]) == [eps[0]]   # its pod is gone
    assert f.filter(S(), req(headers={"x-session-token": "%%%"}), eps) == eps


def test_session_affinity_session_id_binds_at_send_and_moves_only_when_its_pod_is_gone():
    eps = [endpoint(1), endpoint(2), endpoint(3)]
    f = SessionAffinityFilter(strategy="session_id",
                              sessionIdConfig={"sources": [{"header": "x-sid"}, {"attribute": "session-id"}]})
    r = req(headers={"x-sid": "s1"})
    assert f.filter(S(), r, eps) == eps
    f.pre_request(S(), r, result(eps[0]))
    assert f.response_headers(r, result(eps[0]), 200) is None       # nothing written back
    r = req(headers={"x-sid": "s1"})
    assert f.filter(S(), r, eps) == [eps[0]]
    f.pre_request(S(), r, result(eps[1]))                            # present but not picked: binding stays
    r = req(headers={"x-sid": "s1"})
    assert f.filter(S(), r, eps) == [eps[0]]
    r = req(headers={"x-sid": "s1"})
    assert f.filter(S(), r, eps[1:]) == eps[1:]                      # its pod is gone ...
    f.pre_request(S(), r, result(eps[2]))                            # ... so the session moves
    assert f.filter(S(), req(headers={"x-sid": "s1"}), eps) == [eps[2]]
    # the attribute source, published by session-id-producer from a cookie
    producer = SessionIDProducer(cookieName="llm-d-session")
    r = req(headers={"cookie": "a=b; llm-d-session=c9"})
    assert producer.prepare(r) is None and r.attrs["session-id"] == "c9"
    f.pre_request(S(), r, result(eps[1]))
    r2 = req(headers={"cookie": "llm-d-session=c9"})
    producer.prepare(r2)
    assert f.filter(S(), r2, eps) == [eps[1]]
    with pytest.raises(ValueError, match="exactly one of header or attribute"):
        SessionAffinityFilter(strategy="session_id", sessionIdConfig={"sources": [{"header": "a", "attribute": "b"}]})
    with pytest.raises(ValueError, match="exactly one of headerName or cookieName"):
        SessionIDProducer()


def test_endpoint_attribute_filter_and_scorer():
    eps = [endpoint(i) for i in (1, 2, 3, 4)]
    for ep, v in zip(eps, (1.0, 5.0, 9.0, None)):
        ep.metrics.attributes = {"custom.q": v} if v is not None else {}
    lt = {"type": "threshold", "threshold": {"operator": "LessThan", "value": 6}}
    assert EndpointAttributeFilter(attribute="custom.q", algorithm=lt).filter(S(), req(), eps) == [eps[0], eps[1], eps[3]]
    fail = EndpointAttributeFilter(attribute="custom.q", onMissing="Fail", algorithm=lt)
    assert fail.filter(S(), req(), eps) == [eps[0], eps[1]]
    ge = {"type": "threshold", "threshold": {"operator": "GreaterThanOrEqual", "value": 100}}
    assert EndpointAttributeFilter(attribute="custom.q", algorithm=ge).filter(S(), req(), eps[:3]) == []
    assert EndpointAttributeFilter(attribute="custom.q", algorithm=ge, fallbackOnEmpty=True).filter(
        S(), req(), eps[:3]) == eps[:3]
    lower = EndpointAttributeScorer(attributeKey="custom.q", algorithm={"type": "linear_lower_is_better"})
    assert lower.score(S(), req(), eps) == [1.0, 0.5, 0.0, 0.0]                   # missing: 0
    fixed = EndpointAttributeScorer(attributeKey="custom.q", algorithm={
        "type": "linear_higher_is_better", "normalization": {"fixedRange": {"min": 0, "max": 4}}})
    assert fixed.score(S(), req(), eps) == [0.25, 1.0, 1.0, 0.0]                  # clamped
    assert lower.score(S(), req(), eps[:1]) == [1.0]                              # all equal: 1
    with pytest.raises(ValueError, match="min < max"):
        EndpointAttributeScorer(attributeKey="a", algorithm={"type": "linear_lower_is_better", "normalization": {
            "fixedRange": {"min": 1, "max": 1}}})
    with pytest.raises(ValueError, match="operator"):
        EndpointAttributeFilter(attribute="a", algorithm={"type": "threshold", "threshold": {"operator": "Near"}})


def test_custom_metrics_reach_endpoint_attributes():
    from epp.datalayer.metrics_parse import parse_metrics
    from epp.scheduling.plugins.core_metrics_extractor import CoreMetricsExtractor
    ext = CoreMetricsExtractor(engineConfigs=[{
        "name": "vllm", "queuedRequestsSpec": "vllm:num_requests_waiting",
        "customMetrics": [{"attributeKey": "custom.gold", "metricSpec": 'depth{tier="gold"}'}]}])
    ep = endpoint(1)
    page = (b"vllm:num_requests_waiting 2\n"
            b'depth{tier="silver"} 7\ndepth{tier="gold"} 3\n')
    m = parse_metrics(page, ext.names_for(ep), now())
    assert m.waiting == 2 and m.attributes == {"custom.gold": 3.0}
    trt = endpoint(2, **{"llm-d.ai/engine-type": "triton-tensorrt-llm"})
    page = (b'nv_trt_llm_request_metrics{request_type="waiting"} 4\nnv_trt_llm_request_metrics{request_type="scheduled"} 6\n'
            b'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"} 0.5\n')
    m = parse_metrics(page, ext.names_for(trt), now())
    assert (m.waiting, m.running, m.kv_usage) == (4, 6, 0.5)


def test_header_based_testing_filter():
    eps = [endpoint(1), endpoint(2), endpoint(3)]
    f = HeaderBasedTestingFilter()
    assert f.filter(S(), req(), eps) == []                                         # no header: none
    assert f.filter(S(), req(headers={"test-epp-endpoint-selection": " 10.0.0.3:8000, 10.0.0.1 ,10.0.0.3"}),
                    eps) == [eps[2], eps[0]]
    assert f.filter(S(), req(headers={"test-epp-endpoint-selection": "10.0.0.2:9999"}), eps) == []


def test_destination_endpoint_served_verifier():
    v = DestinationEndpointServedVerifier()
    r = req()
    assert v.response_headers(r, None, 200) == [("x-conformance-test-served-endpoint", "fail: missing envoy lb metadata")]
    r.attrs = {SERVED_ATTR: ""}
    assert v.response_headers(r, None, 200)[0][1] == "fail: missing destination endpoint served metadata"
    r.attrs = {SERVED_ATTR: "10.0.0.1:8000"}
    assert v.response_headers(r, None, 200) == [("x-conformance-test-served-endpoint", "10.0.0.1:8000")]


# ---------------------------------------------------------------- scorers, handlers, producers

def test_header_label_affinity_scorer():
    eps = [endpoint(1, zone="a"), endpoint(2, zone="b"), endpoint(3)]
    s = HeaderLabelAffinityScorer(headerName="X-Preferred-Zone", labelKey="zone")
    assert s.score(S(), req(headers={"x-preferred-zone": "b"}), eps) == [0.0, 1.0, 0.0]
    assert s.score(S(), req(), eps) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="required"):
        HeaderLabelAffinityScorer(headerName="x")


def profiles_cfg(n: int, handler: str = "header-profile-handler"):
    names = ["decode", "prefill", "encode"][:n]
    text = ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: queue-scorer\n"
            f"- type: {handler}\nschedulingProfiles:\n"
            + "".join(f"- {{name: {p}, plugins: [{{pluginRef: queue-scorer}}]}}\n" for p in names))
    from epp.scheduling.scheduler import from_config
    return from_config(load(text, "t", allow_experimental=True))


def test_header_profile_handler_runs_the_named_profile():
    eps = [endpoint(1), endpoint(2)]
    s = profiles_cfg(3)
    res, _ = s.schedule(req(headers={"epp-profile": "prefill"}), eps)
    assert res.primary == "prefill" and list(res.profiles) == ["prefill"] and res.targets
    res, _ = s.schedule(req(), eps)                                                  # missing: the default
    assert res.primary == "decode" and res.targets
    res, _ = s.schedule(req(headers={"epp-profile": "embed"}), eps)                 # unknown: none runs -> 429
    assert res.targets == []
    one = profiles_cfg(1)
    assert one.schedule(req(headers={"epp-profile": "whatever"}), eps)[0].primary == "decode"
    assert HeaderProfileHandler(headerName="X-Stage").header == "x-stage"


def test_data_parallel_handler_routes_to_the_primary_port_with_the_rank_in_a_header():
    eps = [endpoint(1), endpoint(2)]
    eps[0].address = "10.0.0.1:8001"
    h = DataParallelProfileHandler(primaryPort=8000)
    from epp.scheduling.profile import Profile
    from epp.scheduling.plugins.max_score_picker import MaxScorePicker
    from epp.scheduling.scheduler import Scheduler
    s = Scheduler([Profile("default", MaxScorePicker(rng=random.Random(1)))], handler=h)
    res, _ = s.schedule(req(), eps[:1])
    assert res.destination == "10.0.0.1:8000" and res.targets[0] is eps[0]      # the pick stays the rank
    assert res.headers == [("x-data-parallel-host-port", "10.0.0.1:8001")]
    with pytest.raises(ValueError, match="1-65535"):
        DataParallelProfileHandler(primaryPort=70000)


def test_p2p_source_names_the_best_cached_peer():
    eps = [endpoint(1), endpoint(2), endpoint(3)]
    approx = ApproxPrefixCacheProducer()
    p = P2PSourceProducer(minCachedTokenDelta=64)
    p.bind({"approx-prefix-cache-producer": approx})
    prompt = b"p" * 256 * 8
    st = S()
    approx.match_info(st, req(prompt))
    approx.pre_request(st, req(prompt), result(eps[1]))                 # pod 2 holds all 8 blocks
    st = S()
    approx.match_info(st, req(prompt))
    res = SchedulingResult({"default": ProfileResult([eps[0]], candidates=eps)}, "default")
    assert p.pre_request(st, req(prompt), res) == [("x-kv-cache-source-host-port", eps[1].address)]
    res = SchedulingResult({"default": ProfileResult([eps[1]], candidates=eps)}, "default")
    assert p.pre_request(st, req(prompt), res) is None                   # the pick is the best holder


def test_probabilistic_admitter_sheds_only_sheddable_requests():
    eps = [endpoint(1, waiting=5), endpoint(2, waiting=5)]                # saturation 1 -> always shed
    a = ProbabilisticAdmitter(rng=random.Random(1))
    assert a.admit(req(priority=0), eps) is None
    assert "rejected, saturation=1.000" in a.admit(req(priority=-1), eps)
    idle = [endpoint(1), endpoint(2)]
    assert all(a.admit(req(priority=-1), idle) is None for _ in range(50))   # saturation 0: p = 0
    assert a.admit(req(priority=-1), []) is None
    with pytest.raises(ValueError, match="power must be > 0"):
        ProbabilisticAdmitter(power=0)


def test_burst_producer_colocates_identical_prompts_within_a_window():
    eps = [endpoint(i) for i in (1, 2, 3)]
    store = EndpointStore()
    store.replace(eps)

    async def run(producer, prompts):
        await producer.run_background(store)
        reqs = [req(p.encode(), rid=str(i)) for i, p in enumerate(prompts)]
        waits = [producer.prepare(r) for r in reqs]
        await asyncio.gather(*waits)
        return [producer.match_info(S(), r) for r in reqs]

    a, b = "alpha " * 100, "beta " * 120
    infos = asyncio.run(run(BurstPrefixCacheProducer(windowDurationMs=20), [a, b, a, a, b, "lonely"]))
    where = [next(iter(i.matched), None) for i in infos]
    assert where[0] == where[2] == where[3] and where[1] == where[4] and where[0] != where[1]
    assert where[5] is None and infos[0].matched[where[0]] == infos[0].total        # full match on its replica
    # maxPerReplica spills a group over replicas
    infos = asyncio.run(run(BurstPrefixCacheProducer(windowDurationMs=10, maxPerReplica=2), [a] * 5))
    counts = {}
    for i in infos:
        counts[next(iter(i.matched))] = counts.get(next(iter(i.matched)), 0) + 1
    assert sorted(counts.values()) == [1, 2, 2]
    # minColocateBlocks: a lone request sharing a long prefix with another gains an affinity to it
    c = "gamma " * 200
    infos = asyncio.run(run(BurstPrefixCacheProducer(windowDurationMs=10, minColocateBlocks=2),
                            [c + "one", c + "two"]))
    assert all(i.matched for i in infos)
    with pytest.raises(ValueError, match="windowDurationMs must be <= 10000"):
        BurstPrefixCacheProducer(windowDurationMs=20000)


def test_every_new_type_loads_by_name():
    load_all()
    body = """plugins:
- {type: token-load-scorer}
- {type: utilization-filter, parameters: {conditions: [{metric: active-requests, maxValue: 8}]}}
- {type: session-affinity-filter}
- {type: endpoint-attribute-filter, parameters: {attribute: a, algorithm: {type: threshold, threshold: {operator: Equal, value: 1}}}}
- {type: endpoint-attribute-scorer, parameters: {attributeKey: a, algorithm: {type: linear_higher_is_better}}}
- {type: header-label-affinity-scorer, parameters: {headerName: h, labelKey: l}}
- {type: header-based-testing-filter}
- {type: destination-endpoint-served-verifier}
- {type: session-id-producer, parameters: {headerName: x-sid}}
- {type: burst-prefix-cache-producer, parameters: {windowDurationMs: 5, balanceBy: tokens}}
- {type: p2p-source-producer}
- {type: probabilistic-admitter}
- {type: inflight-load-producer, parameters: {addEstimatedOutputTokens: true, syncCrossReplicaState: false}}
"""
    c = load("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n" + body, "t", allow_experimental=True)
    (p,) = c.profiles
    assert [f.type_name for f in p.filters] == ["utilization-filter", "session-affinity-filter",
                                                "endpoint-attribute-filter", "header-based-testing-filter"]
    assert [ws.scorer.type_name for ws in p.scorers] == ["token-load-scorer", "endpoint-attribute-scorer",
                                                         "header-label-affinity-scorer"]
