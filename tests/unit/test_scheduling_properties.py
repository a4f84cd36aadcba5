"""Properties over random pools: every scorer stays in [0, 1], pickers only pick what the filters
kept, and the same seed makes the same pick."""
import math
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epp.datalayer.endpoint import Endpoint, Metrics, now
from epp.scheduling.config import load
from epp.scheduling.scheduler import from_config
from epp.scheduling.types import CycleState, LLMRequest

from .test_plugins import (ActiveRequestScorer, ContextLengthAware, KVCacheUtilizationScorer, LoadAwareScorer,
                           LoraAffinityScorer, NoHitLRUScorer, PrefixCacheScorer, RunningRequestsSizeScorer,
                           SessionAffinityScorer)
from epp.scheduling.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from epp.scheduling.plugins.epp_predicted_latency_scorer import PredictedLatencyScorer
from epp.scheduling.plugins.queue_scorer import QueueScorer

number = st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=1e4),
                   st.integers(min_value=-5, max_value=10_000), st.just(float("nan")))
roles = st.sampled_from([None, "prefill", "decode", "both", "prefill-decode", "encode"])


@st.composite
def pools(draw):
    n = draw(st.integers(min_value=1, max_value=12))
    eps = []
    for i in range(n):
        labels = {}
        role = draw(roles)
        if role:
            labels["llm-d.ai/role"] = role
        if draw(st.booleans()):
            labels["llm-d.ai/context-length-range"] = draw(st.sampled_from(["0-1000", "1000-100000", "x", "5-1"]))
        ep = Endpoint(name=f"p{i}", address=f"10.1.0.{i + 1}:8000", labels=labels)
        ep.metrics = Metrics(waiting=draw(number), running=draw(number), kv_usage=draw(number),
                             running_loras=tuple(draw(st.lists(st.sampled_from("abc"), max_size=2))),
                             max_loras=draw(st.integers(0, 3)), updated=now() if draw(st.booleans()) else 0.0)
        ep.in_flight = draw(st.integers(0, 50))
        if draw(st.booleans()):
            ep.metrics.attributes = {"q": draw(number)}
        eps.append(ep)
    return eps


prompts = st.binary(min_size=0, max_size=3000)


def request(prompt: bytes, model="a") -> LLMRequest:
    return LLMRequest(request_id="r", model=model, target_model=model, api="completions", prompt=prompt,
                      headers={"x-session-token": "ZGVmYXVsdC9wMQ=="})


def _token_load_scorer():
    """Bound to a producer with some endpoints far past the threshold."""
    from epp.scheduling.plugins.inflight_load_producer import InFlightLoadProducer
    from epp.scheduling.plugins.token_load_scorer import TokenLoadScorer
    producer = InFlightLoadProducer()
    producer._tokens.update({f"10.1.0.{i}:8000": i * 700_000 for i in range(1, 13)})
    scorer = TokenLoadScorer(queueThresholdTokens=2_000_000)
    scorer.bind({"inflight-load-producer": producer})
    return scorer


def _header_label_scorer():
    from epp.scheduling.plugins.header_label_affinity_scorer import HeaderLabelAffinityScorer
    return HeaderLabelAffinityScorer(headerName="x-session-token", labelKey="llm-d.ai/role")


def _attribute_scorer():
    from epp.scheduling.plugins.endpoint_attribute_scorer import EndpointAttributeScorer
    return EndpointAttributeScorer(attributeKey="q", algorithm={"type": "linear_lower_is_better"})


SCORERS = [QueueScorer(), KVCacheUtilizationScorer(), RunningRequestsSizeScorer(), LoadAwareScorer(),
           ActiveRequestScorer(), LoraAffinityScorer(), SessionAffinityScorer(), PrefixCacheScorer(),
           NoHitLRUScorer(), ContextLengthAware(), PrecisePrefixCacheScorer(), _token_load_scorer(),
           _header_label_scorer(), _attribute_scorer(), PredictedLatencyScorer(),
           PredictedLatencyScorer(itlBudgetMs=30, affinitySlack=0.5)]


def test_every_scorer_that_skips_clamping_is_checked_here():
    from epp.scheduling.framework import REGISTRY, Scorer
    from epp.scheduling.plugins import load_all
    load_all()
    bounded = {c for c in REGISTRY.values() if issubclass(c, Scorer) and c.bounded}
    assert bounded == {type(s) for s in SCORERS}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pools(), prompts)
def test_scores_are_finite_and_in_range(eps, prompt):
    for scorer in SCORERS:
        scores = scorer.score(CycleState(), request(prompt), eps)
        assert len(scores) == len(eps), scorer.type_name
        # raw scores may be NaN for nonsense metrics only if the profile clamps them; ours never are
        assert all(isinstance(s, float) and not math.isnan(s) and 0.0 <= s <= 1.0 for s in scores), \
            (scorer.type_name, scores)


PROFILE = """apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: decode-filter
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: {picker}
  parameters: {{maxNumOfEndpoints: {k}}}
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: decode-filter
  - {{pluginRef: queue-scorer, weight: 2}}
  - {{pluginRef: kv-cache-utilization-scorer, weight: 2}}
  - {{pluginRef: prefix-cache-scorer, weight: 3}}
  - pluginRef: {picker}
"""


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pools(), prompts, st.sampled_from(["max-score-picker", "random-picker", "weighted-random-picker"]),
       st.integers(1, 4), st.integers(0, 2**31))
def test_pickers_respect_filters_and_seeds_repeat(eps, prompt, picker, k, seed):
    def run():
        cfg = load(PROFILE.format(picker=picker, k=k))
        cfg.profiles[0].picker.rng = random.Random(seed)
        if hasattr(cfg.profiles[0].picker, "_random"):
            cfg.profiles[0].picker._random = random.Random(seed).random
        result, _ = from_config(cfg).schedule(request(prompt), eps)
        return [ep.address for ep in result.targets]

    first = run()
    allowed = {ep.address for ep in eps if ep.labels.get("llm-d.ai/role", "decode") in ("decode", "both", "prefill-decode")}
    assert set(first) <= allowed
    assert len(first) == min(k, len(allowed)) and len(set(first)) == len(first)
    assert run() == first
