"""approx-prefix-cache-producer: which endpoints were sent which prompt prefixes, from the EPP's own
routing history, and how much of this request's prefix each one holds.

Blocks are blockSizeTokens tokens: real tokens when a token-producer with a tokenizer is configured,
else blockSizeTokens x 4 bytes of the prompt (upstream's ~4 characters per token). Block keys are
chained xxhash64 seeded with the model name (and cache_salt). Matching runs from block 0 and stops
at the first block no endpoint holds. The picks of the primary profile and of a "prefill" profile
are recorded, each endpoint in its own LRU of lruCapacityPerServer blocks, or its real
num_gpu_blocks when autoTune is on and the endpoint reports vllm:cache_config_info.
"""
from __future__ import annotations

from ...kvcache.prefix_index import PrefixIndex, block_keys
from ..framework import (BindsPlugins, EndpointLifecycle, IndexSize, Plugin, PrefixMatchConsumer, PrefixMatchProducer,
                         PreRequest, need_bool, need_int, register)
from ..types import DEFER, HIT_RATIO, MatchInfo
from .token_producer import TokenProducer, ids_bytes

CHARS_PER_TOKEN = 4


@register
class ApproxPrefixCacheProducer(Plugin, PrefixMatchProducer, PreRequest, EndpointLifecycle, BindsPlugins, IndexSize):
    type_name = "approx-prefix-cache-producer"

    def __init__(self, name: str | None = None, autoTune: bool = True, blockSizeTokens: int = 16,
                 blockSize: int | None = None, maxPrefixBlocksToMatch: int = 256, maxPrefixTokensToMatch: int = 0,
                 lruCapacityPerServer: int = 31_250) -> None:
        super().__init__(name)
        t = self.type_name
        if blockSize is not None:  # older upstream name, in characters
            blockSizeTokens = max(1, need_int(t, "blockSize", blockSize, 1) // CHARS_PER_TOKEN)
        self.block_tokens = need_int(t, "blockSizeTokens", blockSizeTokens, 1)
        self.max_blocks = need_int(t, "maxPrefixBlocksToMatch", maxPrefixBlocksToMatch, 0)
        max_tokens = need_int(t, "maxPrefixTokensToMatch", maxPrefixTokensToMatch, 0)
        if max_tokens:  # the token cap wins when set, as upstream
            self.max_blocks = max(1, max_tokens // self.block_tokens)
        if not self.max_blocks:
            self.max_blocks = 1 << 30
        self.auto_tune = need_bool(t, "autoTune", autoTune)
        self.index = PrefixIndex(need_int(t, "lruCapacityPerServer", lruCapacityPerServer, 1))
        self.tokens: TokenProducer | None = None
        self._state_key = f"prefix/{self.name}"
        self.lookups = self.hit_blocks = self.total_blocks = 0

    def bind(self, plugins: dict) -> None:
        self.tokens = next((p for p in plugins.values() if isinstance(p, TokenProducer) and p.real), None)

    def match_info(self, state, request) -> MatchInfo:
        info = state.get(self._state_key)
        if info is None:
            seed = request.target_model + ("\x00" + request.cache_salt if request.cache_salt else "")
            limit = self.max_blocks * self.block_tokens
            ids = self.tokens.tokens(state, request, limit) if self.tokens is not None else None
            data = request.prompt if ids is None else ids_bytes(ids)
            keys = block_keys(seed, data, self.block_tokens * 4, self.max_blocks)
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
                bs = ep.metrics.block_size or 16
                # the endpoint's cache in our block units: its blocks x its block size / ours
                self.index.set_capacity(ep.address, max(1, ep.metrics.num_gpu_blocks * bs // self.block_tokens))
            self.index.add(ep.address, keys)

    def occupancy(self, address: str) -> float:
        """How full our record of the endpoint's cache is (0..1): a nearly full one evicts to take more."""
        return self.index.occupancy(address)

    def endpoints_removed(self, addresses: list[str]) -> None:
        for a in addresses:
            self.index.remove_endpoint(a)

    def index_size(self) -> int:
        return len(self.index)


def find_prefix_producer(plugins: dict, name: str):
    """The prefix-match producer a consumer reads: the one it names (any producer with match_info, the
    precise one included), else the configured approximate producer, else one an older-style prefix
    scorer carries; None when there is none (the consumer then makes its own)."""
    if name:
        p = plugins.get(name)
        if not isinstance(p, PrefixMatchProducer):
            raise ValueError(f"prefixMatchInfoProducerName {name!r} names no prefix match producer")
        return p
    found = [p for p in plugins.values() if isinstance(p, ApproxPrefixCacheProducer)]
    if not found:
        found = [c for p in plugins.values() if isinstance(p, PrefixMatchConsumer)
                 and isinstance(c := p.carried_producer(), ApproxPrefixCacheProducer)]
    return found[0] if found else None
