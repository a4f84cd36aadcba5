"""epp-predicted-latency-scorer and its latency model: the formula, the online fit, the in-flight
accounting, the failure penalty, the ITL budget, the first-chunk hook through request control, metrics."""
import orjson
import pytest
from prometheus_client import REGISTRY

from epp.datalayer.store import EndpointStore
from epp.requestcontrol.director import Director
from epp.scheduling.config import ConfigError, load
from epp.scheduling.plugins._latency_model import LatencyModel
from epp.scheduling.plugins.epp_predicted_latency_scorer import PredictedLatencyScorer
from epp.scheduling.scheduler import from_config
from epp.scheduling.types import CycleState, LLMRequest, ProfileResult, SchedulingResult
from tests.unit.helpers import endpoint

CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: epp-predicted-latency-scorer
  parameters: {parameters}
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: epp-predicted-latency-scorer
"""


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def request(prompt: bytes, rid: str = "r") -> LLMRequest:
    return LLMRequest(request_id=rid, model="m", target_model="m", api="completions", prompt=prompt)


def scorer(**params) -> PredictedLatencyScorer:
    s = PredictedLatencyScorer(**params)
    s.bind({})
    s.model.clock = Clock()
    return s


def result(ep) -> SchedulingResult:
    return SchedulingResult(profiles={"default": ProfileResult(targets=[ep])}, primary="default")


LIVE = []     # requests stay referenced while in flight, as request control keeps them


def route(s: PredictedLatencyScorer, eps, prompt: bytes, rid: str = "r"):
    """Scores, picks the best and books it (the producer records the prefix, the model the work)."""
    req, state = request(prompt, rid), CycleState()
    LIVE.append(req)
    scores = s.score(state, req, eps)
    best = eps[max(range(len(eps)), key=lambda i: scores[i])]
    res = result(best)
    for p in s.sub_plugins():
        p.pre_request(state, req, res)
    return req, res, scores


def test_cached_prefix_wins_until_its_queue_costs_more_than_prefilling_elsewhere():
    s = scorer(computeWeight=0.0)
    a, b = endpoint(1), endpoint(2)
    prompt = b"x" * 8000                                  # 2,000 tokens at 4 bytes per token
    first, res, _ = route(s, [a, b], prompt, "1")
    held = res.targets[0]
    other = b if held is a else a
    s.model.response_first_chunk(first, res, 0.02 + 2000 * s.model.b0)
    s.model.response_complete(first, res, 200)
    # the pod holding the prompt now predicts a + 0 uncached tokens: it wins
    _, res2, scores = route(s, [held, other], prompt, "2")
    assert res2.targets[0] is held and scores[0] == 1.0 and scores[1] < 0.1
    # queue 3 uncached prompts on it (other prompts): still first while its queue < 2,000 tokens
    for i in range(3):
        route(s, [held], b"q%d" % i + b"y" * 2000, f"q{i}")
    assert s.model.pods[held.address].pending_tokens == pytest.approx(3 * 500, abs=3)
    _, res3, _ = route(s, [held, other], prompt, "3")
    assert res3.targets[0] is held
    route(s, [held], b"z" * 2400, "q9")                     # 2,100 tokens queued: prefilling elsewhere is faster
    _, res4, _ = route(s, [held, other], prompt, "4")
    assert res4.targets[0] is other


def test_compute_weight_keeps_a_prefix_on_its_pod_longer():
    for weight, stays in ((0.0, False), (1.0, True)):
        s = scorer(computeWeight=weight)
        a, b = endpoint(1), endpoint(2)
        route(s, [a], b"p" * 8000, "warm")                 # a holds the prompt, 2,000 tokens pending
        route(s, [a], b"o" * 1600, "other")                # and 400 more of another prompt
        # a: 2,400 queued + 0 uncached; b: 2,000 uncached (+ 2,000 of re-prefill at weight 1)
        _, res, _ = route(s, [a, b], b"p" * 8000, "next")
        assert (res.targets[0] is a) == stays, weight


def test_the_fit_learns_each_pods_prefill_speed_and_routes_to_the_fast_one():
    s = scorer()
    m = s.model
    fast, slow = endpoint(1), endpoint(2)
    for i in range(40):
        for ep, per_token in ((fast, 30e-6), (slow, 100e-6)):
            tokens = 500 + 97 * (i % 13)
            req, res, _ = route(s, [ep], b"%d/" % i + b"t" * (4 * tokens - 4), f"{ep.address}{i}")
            m.response_first_chunk(req, res, 0.01 + per_token * tokens)
            m.response_complete(req, res, 200)
    for ep, per_token in ((fast, 30e-6), (slow, 100e-6)):
        a, b = m.fit(m.pods[ep.address])
        assert b == pytest.approx(per_token, rel=0.05) and a == pytest.approx(0.01, abs=0.003)
    _, res, scores = route(s, [slow, fast], b"new prompt " * 400, "n")
    assert res.targets[0] is fast and scores[0] < 0.7


def test_an_unfitted_pod_starts_from_the_pools_fit():
    m = LatencyModel(prefill_tokens_per_s=10_000, warmup=4)
    m.bind({})
    known = m._pod("known")
    for i in range(10):
        known.observe(1000 + 100 * i, 0.05 + 2e-4 * (1000 + 100 * i), m.forget)
    m._pool_dirty = True
    a, b = m.fit(m._pod("new"))
    assert b == pytest.approx(2e-4, rel=0.01) and a == pytest.approx(0.05, rel=0.05)


def test_queued_requests_another_router_sent_count_through_the_scraped_queue():
    s = scorer()
    s.model.mean_uncached = 1000
    a, b = endpoint(1, waiting=5), endpoint(2, waiting=0)
    est = s.model.estimates(CycleState(), request(b"x" * 400), [a, b])
    assert est[0].work == pytest.approx(5 * 1000 + 100) and est[1].work == pytest.approx(100)


def test_our_requests_that_left_the_queue_since_the_scrape_are_not_counted_again():
    s = scorer()
    clock = s.model.clock
    a = endpoint(1, waiting=3)
    a.metrics.updated = clock.t                  # scraped now: 3 waiting, all ours
    reqs = [route(s, [a], b"%d" % i + b"x" * 400, f"w{i}") for i in range(3)]
    clock.t += 1.0
    for req, res, _ in reqs[:2]:                 # two of them started answering after the scrape
        s.model.response_first_chunk(req, res, 0.05)
    est = s.model.estimates(CycleState(), request(b"y" * 400), [a])[0]
    assert est.work == pytest.approx(101 + 100)   # the one still pending + this one; nobody else's


def test_a_failed_answer_keeps_the_pod_away_for_the_failure_penalty():
    s = scorer(failurePenaltyMs=2000)
    clock = s.model.clock
    a, b = endpoint(1), endpoint(2)
    req, res, _ = route(s, [a], b"x" * 400, "1")
    s.model.response_complete(req, res, 503)
    assert route(s, [a, b], b"y" * 400, "2")[1].targets[0] is b
    clock.t += 2.5
    scores = s.score(CycleState(), request(b"z" * 400), [a, b])
    assert scores[0] > 0.5


def test_itl_budget_excludes_pods_whose_decodes_a_long_prefill_would_stall():
    s = scorer(itlBudgetMs=50, maxNumBatchedTokens=8192, computeWeight=0.0)
    busy, idle = endpoint(1), endpoint(2)
    busy.metrics.running = 20                              # decodes running there
    idle.metrics.waiting = 1                               # queued work, no decodes: predicted slower
    s.model.mean_uncached = 4000
    scores = s.score(CycleState(), request(b"x" * 16000), [busy, idle])   # 4,000 tokens x 100 us = 400 ms stall
    assert scores == [0.0, 1.0]
    without = scorer(computeWeight=0.0)
    without.model.mean_uncached = 4000
    assert without.score(CycleState(), request(b"x" * 16000), [busy, idle])[0] == 1.0


def test_scores_are_bounded_and_the_best_is_one():
    s = scorer()
    eps = [endpoint(i, waiting=i) for i in range(4)]
    s.model.mean_uncached = 300
    scores = s.score(CycleState(), request(b"x" * 3000), eps)
    assert max(scores) == 1.0 and all(0.0 < x <= 1.0 for x in scores)
    assert scores == sorted(scores, reverse=True)


def test_first_chunk_hook_times_streamed_answers_only():
    cfg = load(CONFIG.format(parameters="{}"))
    sched = from_config(cfg)
    model = next(p for p in sched.plugins if isinstance(p, LatencyModel))
    store = EndpointStore()
    store.replace([endpoint(1), endpoint(2)])
    d = Director(store, sched)
    body = orjson.dumps({"model": "m", "prompt": "hello " * 200, "stream": True})
    for sse in (True, False):
        dec = d.decide({}, "/v1/completions", body, None)
        pod = model.pods[dec.targets[0].address]
        before = pod.observations
        d.response_started(dec, 200, sse)
        assert pod.pending_n == 1
        dec.usage.feed(b'data: {"choices":[{"text":"a"}]}\n\n')
        dec.usage.feed(b'data: {"choices":[{"text":"b"}]}\n\n')
        assert pod.observations == before + (1 if sse else 0)
        assert pod.pending_n == (0 if sse else 1)
        d.done(dec, 200)
        assert pod.pending_n == 0 and pod.answering == 0
    assert not model._inflight


def test_prediction_metrics_per_endpoint():
    s = scorer()
    a = endpoint(7)
    req, res, _ = route(s, [a], b"x" * 4000, "m1")
    s.model.response_first_chunk(req, res, 0.123)
    got = {(m.name, tuple(sorted(x.labels.items()))): x.value for m in REGISTRY.collect()
           if m.name.startswith(("epp_ttft", "epp_prefill")) for x in m.samples}
    key = ("endpoint", a.address), ("plugin_name", s.model.name)
    assert got[("epp_ttft_observed_seconds", key)] == pytest.approx(0.123)
    assert ("epp_ttft_predicted_seconds", key) in got and ("epp_prefill_tokens_per_second", key) in got


def test_parameters_are_checked():
    load(CONFIG.format(parameters="{itlBudgetMs: 80, prefillTokensPerSecond: 20000, computeWeight: 0.5}"))
    for bad in ("{itlBudgetMs: -1}", "{prefillTokensPerSecond: 0}", "{forgetFactor: 2}", "{maxNumBatchedTokens: 0}",
                "{nope: 1}"):
        with pytest.raises(ConfigError):
            load(CONFIG.format(parameters=bad))


def test_a_cold_prefix_goes_where_it_evicts_least():
    for weight in (0.0, 1.0):
        s = scorer(computeWeight=0.0, evictionWeight=weight)
        full, empty = endpoint(1), endpoint(2)
        for ep in (full, empty):
            ep.metrics.num_gpu_blocks, ep.metrics.block_size = 10, 16
        for i in range(12):                              # fill full's record of its cache (10 blocks), then done
            req, res, _ = route(s, [full], b"%02d" % i + b"f" * 62, f"f{i}")
            s.model.response_complete(req, res, 200)
        assert s.model.producer.occupancy(full.address) == 1.0 and s.model.producer.occupancy(empty.address) == 0
        scores = s.score(CycleState(), request(b"cold prompt " * 40), [full, empty])
        if weight:
            assert scores[1] == 1.0 and scores[0] < 0.9
        else:
            assert scores[0] == pytest.approx(scores[1], rel=1e-2)


def test_a_full_kv_cache_queues_by_request_slots():
    s = scorer(computeWeight=0.0, evictionWeight=0.0)
    m = s.model
    full, free = endpoint(1), endpoint(2)
    for ep in (full, free):
        pod = m._pod(ep.address)
        pod.d, pod.d_seen = 0.01, True            # 10 ms per output token
    m.mean_output = 200                          # a request lives ~2 s
    full.metrics.kv_usage, full.metrics.running, full.metrics.waiting = 0.97, 8, 4
    free.metrics.kv_usage, free.metrics.running = 0.5, 8
    est = m.estimates(CycleState(), request(b"x" * 400), [full, free])
    # 4 waiting, a slot every 2 s / 8 running: >= 1 s before this one starts
    assert est[0].ttft >= 1.0 and est[1].ttft < 0.1
