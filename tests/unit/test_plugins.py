"""Each plugin's formula, with its edge cases: all equal, no candidates, missing or odd metrics."""
import base64
import math
import random

import pytest

from epp.scheduling.framework import REGISTRY
from epp.scheduling.plugins import load_all
from epp.scheduling.plugins.active_request_scorer import ActiveRequestScorer
from epp.scheduling.plugins.approx_prefix_cache_producer import ApproxPrefixCacheProducer
from epp.scheduling.plugins.by_label_filter import ByLabelFilter
from epp.scheduling.plugins.context_length_aware import ContextLengthAware
from epp.scheduling.plugins.decode_filter import DecodeFilter
from epp.scheduling.plugins.encode_filter import EncodeFilter
from epp.scheduling.plugins.kv_cache_utilization_scorer import KVCacheUtilizationScorer
from epp.scheduling.plugins.label_selector_filter import LabelSelectorFilter
from epp.scheduling.plugins.load_aware_scorer import LoadAwareScorer
from epp.scheduling.plugins.lora_affinity_scorer import LoraAffinityScorer
from epp.scheduling.plugins.max_score_picker import MaxScorePicker
from epp.scheduling.plugins.no_hit_lru_scorer import NoHitLRUScorer
from epp.scheduling.plugins.prefill_filter import PrefillFilter
from epp.scheduling.plugins.prefix_cache_affinity_filter import PrefixCacheAffinityFilter
from epp.scheduling.plugins.prefix_cache_scorer import PrefixCacheScorer
from epp.scheduling.plugins.random_picker import RandomPicker
from epp.scheduling.plugins.running_requests_size_scorer import RunningRequestsSizeScorer
from epp.scheduling.plugins.session_affinity_scorer import SessionAffinityScorer
from epp.scheduling.plugins.token_producer import TokenProducer
from epp.scheduling.plugins.utilization_detector import UtilizationDetector
from epp.scheduling.plugins.weighted_random_picker import WeightedRandomPicker
from epp.scheduling.types import CycleState, LLMRequest, ProfileResult, SchedulingResult

from .helpers import endpoint

S = CycleState


def req(prompt=b"", model="m", headers=None, api="completions", body=None):
    return LLMRequest(request_id="r", model=model, target_model=model, api=api, prompt=prompt,
                      headers=headers or {}, body=body)


def result(*targets, profile="default", **more):
    """A scheduling result; a profile named prefill among `more` is the P/D handler's prefill pick."""
    profiles = {profile: ProfileResult(list(targets))}
    profiles.update({k: ProfileResult(list(v)) for k, v in more.items()})
    return SchedulingResult(profiles, profile, prefill="prefill" if "prefill" in more else None)


def test_every_upstream_type_name_is_registered():
    load_all()
    for t in ("queue-scorer", "kv-cache-utilization-scorer", "running-requests-size-scorer", "active-request-scorer",
              "load-aware-scorer", "lora-affinity-scorer", "session-affinity-scorer", "no-hit-lru-scorer",
              "prefix-cache-scorer", "approx-prefix-cache-producer", "prefix-cache-affinity-filter", "decode-filter",
              "prefill-filter", "encode-filter", "label-selector-filter", "by-label-selector", "by-label",
              "context-length-aware", "max-score-picker", "random-picker", "weighted-random-picker",
              "single-profile-handler", "utilization-detector", "token-producer"):
        assert t in REGISTRY, t


@pytest.mark.parametrize("scorer", [KVCacheUtilizationScorer(), RunningRequestsSizeScorer(), LoadAwareScorer(),
                                    ActiveRequestScorer(), LoraAffinityScorer(), SessionAffinityScorer(),
                                    PrefixCacheScorer(), NoHitLRUScorer(), ContextLengthAware()])
def test_no_candidates_gives_no_scores(scorer):
    assert scorer.score(S(), req(b"x" * 200), []) == []


def test_kv_cache_utilization_and_running_requests():
    eps = [endpoint(1, kv=0.25), endpoint(2, kv=1.0)]
    assert KVCacheUtilizationScorer().score(S(), req(), eps) == [0.75, 0.0]
    for ep, r in zip(eps, (3, 7)):
        ep.metrics.running = r
    assert RunningRequestsSizeScorer().score(S(), req(), eps) == [1.0, 0.0]
    eps[1].metrics.running = 3
    assert RunningRequestsSizeScorer().score(S(), req(), eps) == [1.0, 1.0]  # all equal


def test_load_aware_scorer():
    eps = [endpoint(1, waiting=0), endpoint(2, waiting=64), endpoint(3, waiting=500), endpoint(4, waiting=float("nan"))]
    assert LoadAwareScorer().score(S(), req(), eps) == [0.5, 0.25, 0.0, 0.5]
    assert LoadAwareScorer(threshold=0).threshold == 128
    assert LoadAwareScorer(threshold=8).score(S(), req(), eps[:2]) == [0.5, 0.0]


def test_active_request_scorer_counts_in_flight():
    eps = [endpoint(i) for i in range(1, 4)]
    for ep, n in zip(eps, (0, 2, 4)):
        ep.in_flight = n
    assert ActiveRequestScorer().score(S(), req(), eps) == [1.0, 0.5, 0.0]
    assert ActiveRequestScorer(idleThreshold=2, maxBusyScore=0.5).score(S(), req(), eps) == [1.0, 1.0, 0.0]
    for ep in eps:
        ep.in_flight = 0
    assert ActiveRequestScorer().score(S(), req(), eps) == [1.0, 1.0, 1.0]


def test_lora_affinity_scorer():
    eps = [endpoint(i) for i in range(1, 5)]
    eps[0].metrics.running_loras, eps[0].metrics.max_loras = ("ad",), 2
    eps[1].metrics.running_loras, eps[1].metrics.max_loras = ("x",), 2                  # room for one more
    eps[2].metrics.running_loras, eps[2].metrics.waiting_loras, eps[2].metrics.max_loras = ("x",), ("ad",), 2
    eps[3].metrics.running_loras, eps[3].metrics.max_loras = ("x", "y"), 2              # full
    assert LoraAffinityScorer().score(S(), req(model="ad"), eps) == [1.0, 0.8, 0.6, 0.0]


def test_session_affinity_header_round_trip():
    eps = [endpoint(1), endpoint(2)]
    s = SessionAffinityScorer()
    assert s.score(S(), req(), eps) == [0.0, 0.0]
    (name, token), = s.response_headers(req(), result(eps[1]), 200)
    assert name == "x-session-token" and base64.b64decode(token) == b"default/pod-2"
    assert s.score(S(), req(headers={"x-session-token": token}), eps) == [0.0, 1.0]
    assert s.score(S(), req(headers={"x-session-token": "%%%not-base64"}), eps) == [0.0, 0.0]


def test_session_affinity_session_id_strategy():
    eps = [endpoint(1), endpoint(2)]
    s = SessionAffinityScorer(strategy="session_id")
    r = req(headers={"x-session-id": "abc"})
    assert s.score(S(), r, eps) == [0.0, 0.0]
    s.pre_request(S(), r, result(eps[0]))                          # bound when the request is sent
    assert s.response_headers(r, result(eps[0]), 200) is None     # nothing on the response
    assert s.score(S(), r, eps) == [1.0, 0.0]
    with pytest.raises(ValueError, match="strategy"):
        SessionAffinityScorer(strategy="cookie")


def test_prefix_scorer_match_length_weight():
    eps = [endpoint(1), endpoint(2)]
    prod = ApproxPrefixCacheProducer()
    short = b"s" * 64 * 4            # 4 blocks of 16 tokens
    long_ = b"l" * 64 * 100          # 100 blocks
    state = S()
    prod.match_info(state, req(short))
    prod.pre_request(state, req(short), result(eps[0]))
    state = S()
    prod.match_info(state, req(long_))
    prod.pre_request(state, req(long_ + b"x" * 64 * 100), result(eps[1]))
    plain = PrefixCacheScorer()
    plain.producer = prod
    weighted = PrefixCacheScorer(matchLengthWeight=0.5, matchLengthScaleTokens=1600)
    weighted.producer = prod
    assert plain.score(S(), req(short), eps) == [1.0, 0.0]
    assert plain.score(S(), req(long_ + b"y" * 64 * 100), eps) == [0.0, 0.5]
    # short, fully matched: half the weight on a length of 64 tokens of 1,600 -> barely counts
    assert weighted.score(S(), req(short), eps)[0] == pytest.approx(0.5 + 0.5 * (64 / 1600) ** 2)
    # long, half matched: 1,600 tokens matched reaches the scale -> full length score
    assert weighted.score(S(), req(long_ + b"y" * 64 * 100), eps)[1] == pytest.approx(0.25 + 0.5)


def test_prefix_producer_records_prefill_pick_and_auto_tunes():
    eps = [endpoint(1), endpoint(2)]
    eps[0].metrics.num_gpu_blocks, eps[0].metrics.block_size = 8, 16    # 8 x 16 tokens = 2 of our 64-token blocks
    prod = ApproxPrefixCacheProducer()
    prompt = b"p" * 256 * 5
    state = S()
    prod.match_info(state, req(prompt))
    prod.pre_request(state, req(prompt), result(eps[0], profile="decode", prefill=[eps[1]]))
    matched = prod.match_info(S(), req(prompt)).matched
    assert matched == {eps[0].address: 2, eps[1].address: 5}   # capacity 2 blocks on pod 1: the head kept


def test_no_hit_lru_spreads_cold_requests():
    eps = [endpoint(i) for i in range(1, 4)]
    s = NoHitLRUScorer()
    picks = []
    for i in range(6):
        state = S()
        r = req(f"cold prompt {i} ".encode() * 20)
        scores = s.score(state, r, eps)
        best = eps[max(range(3), key=lambda k: scores[k])]
        picks.append(best.name)
        s.pre_request(state, r, result(best))
    assert picks[:3] == ["pod-1", "pod-2", "pod-3"] and picks[3:] == ["pod-1", "pod-2", "pod-3"]


def test_no_hit_lru_is_neutral_on_warm_requests():
    eps = [endpoint(1), endpoint(2)]
    s = NoHitLRUScorer()
    s.producer = ApproxPrefixCacheProducer()
    r = req(b"w" * 640)
    state = S()
    s.producer.match_info(state, r)
    s.producer.pre_request(state, r, result(eps[0]))
    assert s.score(S(), r, eps) == [0.5, 0.5]


def test_prefix_affinity_filter_sticks_unless_too_slow():
    eps = [endpoint(1), endpoint(2), endpoint(3)]
    prod = ApproxPrefixCacheProducer()
    r = req(b"a" * 64 * 10)
    state = S()
    prod.match_info(state, r)
    prod.pre_request(state, r, result(eps[0]))
    f = PrefixCacheAffinityFilter(maxTTFTPenaltyMs=1000, peakPrefillThroughput=10000)
    f.producer = prod
    assert f.filter(S(), r, eps) == [eps[0]]
    eps[0].in_flight_tokens = 20_000          # 2 s of queued prefill on the sticky pod
    assert f.filter(S(), r, eps) == eps
    assert f.filter(S(), req(b"zzz" * 200), eps) == eps            # nobody sticky
    assert f.filter(S(), r, eps[:1]) == eps[:1]
    explore = PrefixCacheAffinityFilter(explorationProbability=1.0)
    explore.producer = prod
    eps[0].in_flight_tokens = 0
    assert explore.filter(S(), r, eps) == eps


def test_role_filters():
    eps = [endpoint(1, **{"llm-d.ai/role": "prefill"}), endpoint(2, **{"llm-d.ai/role": "decode"}),
           endpoint(3, **{"llm-d.ai/role": "both"}), endpoint(4), endpoint(5, **{"llm-d.ai/role": "encode"}),
           endpoint(6, **{"llm-d.ai/role": "prefill-decode"})]
    names = lambda xs: [e.name for e in xs]  # noqa: E731
    assert names(DecodeFilter().filter(S(), req(), eps)) == ["pod-2", "pod-3", "pod-4", "pod-6"]
    assert names(PrefillFilter().filter(S(), req(), eps)) == ["pod-1", "pod-3", "pod-6"]
    assert names(EncodeFilter().filter(S(), req(), eps)) == ["pod-5"]


def test_label_selector_filters():
    eps = [endpoint(1, zone="a", gpu="h100"), endpoint(2, zone="b", gpu="h100"), endpoint(3, zone="a")]
    names = lambda xs: [e.name for e in xs]  # noqa: E731
    f = LabelSelectorFilter(matchLabels={"zone": "a"})
    assert names(f.filter(S(), req(), eps)) == ["pod-1", "pod-3"]
    f = LabelSelectorFilter(matchExpressions=[{"key": "gpu", "operator": "Exists"},
                                              {"key": "zone", "operator": "NotIn", "values": ["a"]}])
    assert names(f.filter(S(), req(), eps)) == ["pod-2"]
    with pytest.raises(ValueError, match="operator"):
        LabelSelectorFilter(matchExpressions=[{"key": "x", "operator": "Near"}])
    b = ByLabelFilter(label="gpu", validValues=["h100"], allowsNoLabel=True)
    assert names(b.filter(S(), req(), eps)) == ["pod-1", "pod-2", "pod-3"]
    b = ByLabelFilter(label="gpu", validValues=["a100"])
    assert b.filter(S(), req(), eps) == []


def test_context_length_aware():
    lbl = "llm-d.ai/context-length-range"
    eps = [endpoint(1, **{lbl: "0-2048"}), endpoint(2, **{lbl: "2048-131072"}), endpoint(3), endpoint(4, **{lbl: "junk"})]
    c = ContextLengthAware()
    short = req(b"x" * 400)           # ~100 tokens
    s = c.score(S(), short, eps)
    assert s[0] > 0.3 and s[1] == pytest.approx(0.3 / (1 + (2048 - 100) / 1000)) and s[2] == 0.5 and s[3] == 0.0
    assert c.filter(S(), short, eps) == eps                              # filtering off by default
    cf = ContextLengthAware(enableFiltering=True)
    assert [e.name for e in cf.filter(S(), short, eps)] == ["pod-1", "pod-3"]


def test_pickers():
    eps = [endpoint(i) for i in range(1, 5)]
    assert MaxScorePicker().pick(S(), req(), [], []) == []
    assert MaxScorePicker(maxNumOfEndpoints=0).max_endpoints == 1
    rp = RandomPicker(maxNumOfEndpoints=2, rng=random.Random(1))
    got = rp.pick(S(), req(), eps, [0.0] * 4)
    assert len(got) == 2 and len(set(got)) == 2
    seen = {RandomPicker(rng=random.Random(i)).pick(S(), req(), eps, [1, 0, 0, 0])[0].name for i in range(60)}
    assert len(seen) == 4                                                # scores ignored
    wp = WeightedRandomPicker(rng=random.Random(2))
    counts = {e.name: 0 for e in eps}
    for _ in range(4000):
        counts[wp.pick(S(), req(), eps, [0.1, 0.3, 0.6, 0.0])[0].name] += 1
    assert counts["pod-4"] == 0                                          # zero weight never drawn
    assert 300 < counts["pod-1"] < 500 and 1000 < counts["pod-2"] < 1400 and 2200 < counts["pod-3"] < 2600
    allzero = WeightedRandomPicker(maxNumOfEndpoints=4, rng=random.Random(3)).pick(S(), req(), eps, [0.0, math.nan, -1, 0])
    assert sorted(e.name for e in allzero) == ["pod-1", "pod-2", "pod-3", "pod-4"]  # uniform fallback


def test_utilization_detector():
    eps = [endpoint(1, waiting=10), endpoint(2, kv=0.4), endpoint(3, fresh=False)]
    d = UtilizationDetector()
    assert d.saturation(eps) == pytest.approx((2.0 + 0.5 + 1.0) / 3)
    assert d.saturation([]) == 1.0
    assert d.filter(S(), req(), eps) == [eps[1]]
    assert d.filter(S(), req(), [eps[0]]) == [eps[0]]                    # fail open when all would go
    assert UtilizationDetector(headroom=1.0).filter(S(), req(), eps) == eps[:2]
    with pytest.raises(ValueError, match="kvCacheUtilThreshold"):
        UtilizationDetector(kvCacheUtilThreshold=1.5)
    with pytest.raises(ValueError, match="duration"):
        UtilizationDetector(metricsStalenessThreshold="soon")


def test_token_producer_local_tokenizer_makes_token_blocks(tmp_path):
    from vllm_sim.tokenizer import DEFAULT_DIR
    tp = TokenProducer(local={"path": DEFAULT_DIR})
    r = req(b"", body={"prompt": "hello world " * 50})
    ids = tp.tokens(S(), r)
    assert ids and all(isinstance(i, int) for i in ids)
    assert tp.token_count(S(), r) == len(ids)
    chat = req(b"", api="chat", body={"messages": [{"role": "user", "content": "hello world " * 50}]})
    assert tp.tokens(S(), chat)
    prod = ApproxPrefixCacheProducer(blockSizeTokens=16)     # raised to upstream's 64-token minimum
    prod.bind({"t": tp})
    info = prod.match_info(S(), r)
    assert info.total == -(-len(ids) // 64) and info.block_tokens == 64   # the last partial block counts
    with pytest.raises(ValueError, match="no tokenizer.json"):
        TokenProducer(local={"path": str(tmp_path)})
    with pytest.raises(ValueError, match="one backend"):
        TokenProducer(vllm={"url": "http://x"}, local={"path": DEFAULT_DIR})
    with pytest.raises(ValueError, match="http:// URL"):
        TokenProducer(modelName="m", vllm={"url": "https://x"})
    with pytest.raises(ValueError, match="unknown field"):
        TokenProducer(modelName="m", vllm={"uri": "http://x"})
    with pytest.raises(ValueError, match="duration"):
        TokenProducer(modelName="m", vllm={"timeout": "soon"})
    assert TokenProducer().tokens(S(), r) is None                        # estimate: bytes are the blocks


def test_token_producer_pieces_equal_whole_text_and_stop_at_the_limit():
    from vllm_sim.tokenizer import DEFAULT_DIR
    tp = TokenProducer(local={"path": DEFAULT_DIR})
    assert tp.chunked
    rng = random.Random(4)
    words = ["routing", "cache", "  spaced", "ünï", "日本語", "x,y", "\n\n", "42"]
    text = " ".join(rng.choice(words) for _ in range(6000))
    whole = tp.tokenizer.encode(text, add_special_tokens=False).ids
    r = req(b"", body={"prompt": text})
    state = S()
    head = tp.tokens(state, r, 500)
    assert 500 <= len(head) < len(whole) and head == whole[:len(head)]     # only the head was tokenized
    assert tp.tokens(state, r, 0) == whole                                 # the rest on demand, same tokens
    assert tp.tokens(S(), r) == whole                                      # cached pieces give the same answer
