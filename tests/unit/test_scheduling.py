import random

from epp.kvcache.prefix_index import PrefixIndex, block_keys
from epp.scheduling.plugins.max_score_picker import MaxScorePicker
from epp.scheduling.plugins.prefix_cache_scorer import PrefixCacheScorer
from epp.scheduling.plugins.queue_scorer import QueueScorer
from epp.scheduling.types import CycleState, LLMRequest, ProfileResult, SchedulingResult

from .helpers import endpoint


def req(prompt: bytes, model="m", salt=""):
    return LLMRequest(request_id="r", model=model, target_model=model, api="completions", prompt=prompt, cache_salt=salt)


def test_block_keys_chain_and_seed():
    a = block_keys("m", b"x" * 64 * 3 + b"tail", 64, 256)
    assert len(a) == 3 and len(set(a)) == 3
    assert block_keys("m", b"x" * 64 * 3, 64, 2) == a[:2]
    assert block_keys("other", b"x" * 64, 64, 256) != a[:1]
    # a key names the whole prefix: same block after a different first block differs
    assert block_keys("m", b"y" * 64 + b"x" * 64, 64, 256)[1] != a[1]


def test_index_consecutive_match_lru_and_removal():
    idx = PrefixIndex(capacity_per_endpoint=3)
    idx.add("a", [1, 2, 3])
    idx.add("b", [1, 9])
    assert idx.match([1, 2, 3, 4]) == {"a": 3, "b": 1}
    idx.add("a", [7])                 # evicts the deepest block of a's prefix first (3), never its head
    assert idx.match([1, 2, 3]) == {"a": 2, "b": 1}
    assert len(idx) == 5
    idx.remove_endpoint("b")
    assert idx.match([1]) == {"a": 1} and len(idx) == 3
    idx.remove_endpoint("a")
    assert idx.match([1]) == {} and len(idx) == 0


def test_prefix_scorer_learns_from_its_picks():
    scorer = PrefixCacheScorer()
    eps = [endpoint(1), endpoint(2)]
    prompt = b"p" * 6400
    state = CycleState()
    assert scorer.score(state, req(prompt), eps) == [0.0, 0.0]
    scorer.producer.pre_request(state, req(prompt), SchedulingResult({"d": ProfileResult([eps[1]])}, "d"))
    state = CycleState()
    # 6,400 bytes = 25 blocks of 64 estimated tokens; 7,040 bytes = 27.5 -> 28 (the partial one counts)
    assert scorer.score(state, req(prompt + b"q" * 640), eps) == [0.0, 25 / 28]
    assert scorer.score(CycleState(), req(prompt, salt="other"), eps) == [0.0, 0.0]
    scorer.producer.endpoints_removed([eps[1].address])
    assert scorer.score(CycleState(), req(prompt), eps) == [0.0, 0.0]


def test_queue_scorer_min_max():
    eps = [endpoint(1, waiting=0), endpoint(2, waiting=5), endpoint(3, waiting=10)]
    assert QueueScorer().score(CycleState(), req(b""), eps) == [1.0, 0.5, 0.0]
    assert QueueScorer().score(CycleState(), req(b""), eps[:1] * 2) == [1.0, 1.0]


def test_max_score_picker_breaks_ties_at_random_and_orders_fallbacks():
    eps = [endpoint(i) for i in range(1, 5)]
    picker = MaxScorePicker(rng=random.Random(3))
    seen = {picker.pick(None, None, eps, [1.0, 1.0, 0.5, 1.0])[0].name for _ in range(200)}
    assert seen == {"pod-1", "pod-2", "pod-4"}
    top = MaxScorePicker(maxNumOfEndpoints=3).pick(None, None, eps, [0.1, 0.9, 0.5, 0.7])
    assert [e.name for e in top] == ["pod-2", "pod-4", "pod-3"]


def test_index_matches_what_a_walk_would_find():
    """Binary-search matching equals a block-by-block walk on random traffic with eviction."""
    import random
    rng = random.Random(0)
    idx = PrefixIndex(capacity_per_endpoint=200)
    prompts = [bytes(rng.choices(b"ab", k=64 * rng.randint(1, 40))) for _ in range(60)]
    walked = {}
    for step in range(400):
        keys = block_keys("m", rng.choice(prompts), 64, 256)
        got = idx.match(keys)
        for ep, n in got.items():
            assert all(idx.holds(ep, k) for k in keys[:n])
            assert n == len(keys) or not idx.holds(ep, keys[n])
        idx.add(f"ep{step % 4}", keys)
        walked[step] = got
    assert any(walked.values())
