"""approx-prefix-cache-producer: which endpoints were sent which prompt prefixes, from the EPP's own
routing history, and how much of this request's prefix each one holds.

As llm-d router v0.10: the prompt's tokens (from token-producer: real ones with a tokenizer, else
its estimate of ~4 bytes per token) are cut into blocks of blockSizeTokens, the last partial block
included; with autoTune the block size is the model server's (vllm:cache_config_info block_size).
Either way a block is never smaller than 64 tokens: the index keeps one entry per endpoint and
block, and finer blocks cost memory without routing better (upstream #1158). Block keys are chained
xxhash64 seeded with the target model (and cache_salt). At most maxPrefixTokensToMatch tokens
(131072) are hashed, or maxPrefixBlocksToMatch blocks (2048) when the token cap is 0; both 0: the
whole prompt. Matching runs from block 0 and stops at the first block no endpoint holds. The picks of
the primary profile and of a prefill profile are recorded, each endpoint in its own LRU of
lruCapacityPerServer blocks, or, with autoTune, its real KV cache (num_gpu_blocks, in our block
size) when the endpoint reports vllm:cache_config_info.
"""
from __future__ import annotations

import logging

from ...kvcache.prefix_index import PrefixIndex, block_keys
from ..framework import (BindsPlugins, EndpointLifecycle, IndexSize, Plugin, PrefixMatchConsumer, PrefixMatchProducer,
                         PreRequest, StateDumper, TokenizedPromptConsumer, need_bool, need_int, register)
from ..types import DEFER, HIT_RATIO, HIT_SOURCE, PREDICTION, CachePrediction, MatchInfo
from .token_producer import TokenProducer, ids_bytes

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
MAX_DUMP_PODS = 100   # upstream's cap on the debug dump
MIN_BLOCK_TOKENS = 64
DEFAULT_BLOCK_TOKENS = 16


@register
class ApproxPrefixCacheProducer(Plugin, PrefixMatchProducer, PreRequest, EndpointLifecycle, BindsPlugins, IndexSize,
                                StateDumper, TokenizedPromptConsumer):
    type_name = "approx-prefix-cache-producer"

    def __init__(self, name: str | None = None, autoTune: bool = True, blockSizeTokens: int = DEFAULT_BLOCK_TOKENS,
                 blockSize: int | None = None, maxPrefixBlocksToMatch: int = 2048,
                 maxPrefixTokensToMatch: int = 131072, lruCapacityPerServer: int = 31_250) -> None:
        super().__init__(name)
        t = self.type_name
        self.auto_tune = need_bool(t, "autoTune", autoTune)
        configured = need_int(t, "blockSizeTokens", blockSizeTokens, 0)
        if blockSize is not None and need_int(t, "blockSize", blockSize, 0) > 0:
            # deprecated; as upstream, its value becomes blockSizeTokens when that was left at its default
            log.warning("%s: 'blockSize' is deprecated; use 'blockSizeTokens'", self.name)
            if configured == DEFAULT_BLOCK_TOKENS:
                configured = blockSize
        if not self.auto_tune and configured <= 0:
            raise ValueError(f"{t}: blockSizeTokens must be > 0 when autoTune is disabled (current value: "
                             f"{configured})")
        if 0 < configured < MIN_BLOCK_TOKENS:
            log.info("%s: blockSizeTokens %d is below the minimum of %d tokens; %d is used", self.name, configured,
                     MIN_BLOCK_TOKENS, MIN_BLOCK_TOKENS)
        self.configured_block = configured
        self.block_tokens = max(configured, MIN_BLOCK_TOKENS)
        self.max_tokens = need_int(t, "maxPrefixTokensToMatch", maxPrefixTokensToMatch, 0)
        self.max_blocks_cap = need_int(t, "maxPrefixBlocksToMatch", maxPrefixBlocksToMatch, 0)
        self.max_blocks = self._max_blocks(self.block_tokens)
        self.index = PrefixIndex(need_int(t, "lruCapacityPerServer", lruCapacityPerServer, 1))
        self.tokens: TokenProducer | None = None
        self._state_key = f"prefix/{self.name}"
        self._source = (self.name, self.type_name)
        self.lookups = self.hit_blocks = self.total_blocks = 0

    def _max_blocks(self, block: int) -> int:
        """The token cap wins when set; both caps 0: the whole prompt."""
        if self.max_tokens:
            return self.max_tokens // block
        return self.max_blocks_cap or (1 << 62)

    def _tune_block(self, engine_block: int) -> None:
        """autoTune: the model server's own block size (never below the minimum) from now on."""
        block = max(engine_block, MIN_BLOCK_TOKENS)
        if block != self.block_tokens:
            self.block_tokens = block
            self.max_blocks = self._max_blocks(block)

    def bind(self, plugins: dict) -> None:
        self.tokens = next((p for p in plugins.values() if isinstance(p, TokenProducer) and p.real), None)

    def match_info(self, state, request) -> MatchInfo:
        info = state.get(self._state_key)
        if info is None:
            seed = request.target_model + ("\x00" + request.cache_salt if request.cache_salt else "")
            limit = self.max_blocks * self.block_tokens
            ids = self.tokens.tokens(state, request, limit) if self.tokens is not None else None
            # without a tokenizer 4 bytes are one token: blocks of the prompt's bytes are the blocks of
            # the estimate backend's pseudo-tokens
            data = request.prompt if ids is None else ids_bytes(ids)
            keys = block_keys(seed, data, self.block_tokens * CHARS_PER_TOKEN, self.max_blocks, partial=True)
            info = state[self._state_key] = MatchInfo(keys, self.index.match(keys) if keys else {}, self.block_tokens)
        return info

    def pre_request(self, state, request, result):
        info = state.get(self._state_key)
        if info is None or not info.keys:
            return None
        keys = info.keys
        primary = result.targets[0] if result.targets else None
        if primary is not None:
            matched = info.matched.get(primary.address, 0)
            self.lookups += 1
            self.hit_blocks += matched
            self.total_blocks += len(keys)
            state[HIT_RATIO] = matched / len(keys)
            held = result.prefill_target() or primary   # the pod that computes the prompt
            state[PREDICTION] = CachePrediction(self.type_name, self.name, held.address,
                                                info.cached_tokens(held.address), self.tokens is None)
            state[HIT_SOURCE] = self._source
        chosen = result.chosen()
        defer = state.get(DEFER)
        if defer is not None:  # the index update does not hold up the answer
            defer(self._record, chosen, keys)
        else:
            self._record(chosen, keys)
        return None

    def _record(self, chosen, keys: list[int]) -> None:
        for ep in chosen:
            if self.auto_tune and ep.metrics.num_gpu_blocks:
                bs = ep.metrics.block_size or DEFAULT_BLOCK_TOKENS
                # the endpoint's cache in our block units (upstream uses its block count as is, which
                # overstates it by our block size / its block size)
                self.index.set_capacity(ep.address, max(1, ep.metrics.num_gpu_blocks * bs // self.block_tokens))
            self.index.add(ep.address, keys)
        if self.auto_tune and chosen and chosen[0].metrics.block_size > 0:
            self._tune_block(chosen[0].metrics.block_size)

    def occupancy(self, address: str) -> float:
        """How full our record of the endpoint's cache is (0..1): a nearly full one evicts to take more."""
        return self.index.occupancy(address)

    def endpoints_removed(self, addresses: list[str]) -> None:
        for a in addresses:
            self.index.remove_endpoint(a)

    def index_size(self) -> int:
        return len(self.index)

    def dump_state(self) -> dict:
        """Upstream's shape: blocks per pod, most first, capped; never the block hashes."""
        pods = sorted(self.index.endpoint_blocks().items(), key=lambda kv: (-kv[1], kv[0]))
        return {"pods": [{"pod": a, "blocks": n} for a, n in pods[:MAX_DUMP_PODS]], "totalPods": len(pods),
                "maxPods": MAX_DUMP_PODS, "blockSizeTokens": self.block_tokens, "lookups": self.lookups,
                "hitRatio": round(self.hit_blocks / self.total_blocks, 4) if self.total_blocks else 0.0}


def find_prefix_producer(plugins: dict, name: str):
    """The prefix-match producer a consumer reads: the one it names (any producer with match_info, the
    precise one included), else - as upstream's data keys work - the default one, named
    approx-prefix-cache-producer (the loader creates it when a consumer needs it), else one an older-
    style prefix scorer carries; None when there is none (the consumer then makes its own)."""
    if name:
        p = plugins.get(name)
        if not isinstance(p, PrefixMatchProducer):
            raise ValueError(f"prefixMatchInfoProducerName {name!r} names no prefix match producer")
        return p
    default = plugins.get(ApproxPrefixCacheProducer.type_name)
    found = [default] if isinstance(default, ApproxPrefixCacheProducer) else []
    if not found:
        found = [c for p in plugins.values() if isinstance(p, PrefixMatchConsumer)
                 and isinstance(c := p.carried_producer(), ApproxPrefixCacheProducer)]
    return found[0] if found else None
