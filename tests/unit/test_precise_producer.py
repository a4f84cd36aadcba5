"""The precise producer on the request path: tier weights, unweighted blocks for other plugins,
speculative entries, and the approximate fallback (counted) when there are no tokens."""
import pytest

from epp.scheduling.plugins.precise_prefix_cache_producer import FALLBACKS, PrecisePrefixCacheProducer
from epp.scheduling.plugins.prefix_cache_scorer import PrefixCacheScorer
from epp.scheduling.plugins.token_producer import TokenProducer
from epp.scheduling.types import CycleState, LLMRequest, ProfileResult, SchedulingResult

from .helpers import endpoint


@pytest.fixture(scope="module")
def tokens():
    from vllm_sim.tokenizer import DEFAULT_DIR
    return TokenProducer(local={"path": DEFAULT_DIR})


def req(text: str) -> LLMRequest:
    return LLMRequest("r", "m", "m", "completions", text.encode(), body={"prompt": text})


def stored(prod, tokens, pod, text, blocks, medium="GPU", start=0):
    ids = tokens.tokenizer.encode(text, add_special_tokens=False).ids[:blocks * 16]
    hashes = [hash((pod, medium, i)) & (2**64 - 1) for i in range(blocks)]
    prod.index.apply_stored(pod, hashes, None, ids, 16, medium, model="m")


def test_tiers_weigh_the_score_but_not_the_cached_tokens(tokens):
    prod = PrecisePrefixCacheProducer(speculativeIndexing=False)
    prod.bind({"t": tokens})
    text = "the quick brown fox jumps over the lazy dog " * 40
    eps = [endpoint(1), endpoint(2), endpoint(3)]
    stored(prod, tokens, eps[0].address, text, 10, "GPU")
    stored(prod, tokens, eps[1].address, text, 10, "CPU")
    info = prod.match_info(CycleState(), req(text))
    assert info.blocks == {eps[0].address: 10, eps[1].address: 10}
    assert info.matched[eps[0].address] == pytest.approx(10.0) and info.matched[eps[1].address] == pytest.approx(8.0)
    assert info.cached_tokens(eps[1].address) == 160                 # a CPU block is a whole block of tokens
    scorer = PrefixCacheScorer(prefixMatchInfoProducerName="p")
    scorer.bind({"p": prod})
    s = scorer.score(CycleState(), req(text), eps)
    assert s[0] > s[1] > s[2] == 0.0


def test_speculative_entries_cover_a_burst_then_expire(tokens):
    prod = PrecisePrefixCacheProducer(speculativeIndexing=True, speculativeTTL="50ms")
    prod.bind({"t": tokens})
    text = "a prompt nobody has sent before, long enough for blocks " * 10
    ep = endpoint(1)
    state = CycleState()
    assert not prod.match_info(state, req(text)).blocks
    prod.pre_request(state, req(text), SchedulingResult({"d": ProfileResult([ep])}, "d"))
    assert prod.match_info(CycleState(), req(text)).blocks.get(ep.address, 0) > 0
    import time
    time.sleep(0.08)
    assert not prod.match_info(CycleState(), req(text)).blocks.get(ep.address)


def test_without_tokens_it_falls_back_to_approximate_and_counts(tokens):
    prod = PrecisePrefixCacheProducer()
    prod.bind({})                                              # no token-producer configured
    before = FALLBACKS.labels("no_tokenizer")._value.get()
    ep = endpoint(1)
    text = "x" * 2560
    state = CycleState()
    info = prod.match_info(state, req(text))
    assert info.blocks is None and info.total == 10            # approximate blocks of 64 tokens (256 bytes)
    prod.pre_request(state, req(text), SchedulingResult({"d": ProfileResult([ep])}, "d"))
    prod.fallback.pre_request(state, req(text), SchedulingResult({"d": ProfileResult([ep])}, "d"))
    assert prod.match_info(CycleState(), req(text)).matched == {ep.address: 10}
    assert FALLBACKS.labels("no_tokenizer")._value.get() >= before + 2


def test_bad_parameters_name_the_field():
    with pytest.raises(ValueError, match="unknown field kvEventsConfig.zmqEndpont"):
        PrecisePrefixCacheProducer(kvEventsConfig={"zmqEndpont": "tcp://*:5557"})
    with pytest.raises(ValueError, match="tierWeights"):
        PrecisePrefixCacheProducer(tierWeights={"GPU": 2})


def test_a_tokenizer_that_counts_differently_from_the_server_is_reported(tokens, caplog):
    from epp.requestcontrol.usage import Usage
    from epp.scheduling.plugins.precise_prefix_cache_producer import CHECK_EVERY, TOKEN_MISMATCH
    prod = PrecisePrefixCacheProducer()
    prod.bind({"t": tokens})
    text = "hello there " * 50
    ours = len(tokens.tokenizer.encode(text, add_special_tokens=False).ids)
    before = TOKEN_MISMATCH._value.get()
    for server_count in [ours] * CHECK_EVERY + [ours + 1] + [ours + 1] * (CHECK_EVERY - 1):
        r = req(text)
        prod.match_info(CycleState(), r)
        prod.response_complete(r, None, 200, Usage(prompt_tokens=server_count, completion_tokens=1, seen=True))
    assert TOKEN_MISMATCH._value.get() == before + 1 and prod.mismatches == 1   # checked on 1 answer in CHECK_EVERY
    assert "does not match the served model" in caplog.text
