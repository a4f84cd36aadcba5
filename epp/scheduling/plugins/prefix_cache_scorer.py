"""prefix-cache-scorer (approximate): how much of the prompt's prefix the EPP has already sent to
each endpoint, from its own routing history.

Blocks are blockSizeTokens x 4 characters (upstream's characters-per-token guess) of the prompt's
UTF-8 bytes; matching runs from block 0 and stops at the first block no endpoint holds; at most
maxPrefixBlocksToMatch blocks. Per-endpoint LRU of lruCapacityPerServer blocks, or the endpoint's
real num_gpu_blocks when autoTune is on and its metrics report cache_config_info.
"""
from __future__ import annotations

from ...kvcache.prefix_index import PrefixIndex, block_keys
from ..framework import EndpointLifecycle, PreRequest, Scorer, register

CHARS_PER_TOKEN = 4
STATE_KEYS = "prefix-cache-scorer/keys"
STATE_MATCH = "prefix-cache-scorer/match"
STATE_HIT_RATIO = "prefix-cache-scorer/hit-ratio"  # of the primary pick, for the hit-ratio metric


@register
class PrefixCacheScorer(Scorer, PreRequest, EndpointLifecycle):
    type_name = "prefix-cache-scorer"

    def __init__(self, name: str | None = None, blockSizeTokens: int = 16, maxPrefixBlocksToMatch: int = 256,
                 lruCapacityPerServer: int = 31_250, autoTune: bool = True, blockSize: int | None = None) -> None:
        super().__init__(name)
        if blockSize is not None:  # older upstream name, in characters
            blockSizeTokens = max(1, blockSize // CHARS_PER_TOKEN)
        for key, v in (("blockSizeTokens", blockSizeTokens), ("maxPrefixBlocksToMatch", maxPrefixBlocksToMatch),
                       ("lruCapacityPerServer", lruCapacityPerServer)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{key} must be an integer >= 1")
        self.block_bytes = blockSizeTokens * CHARS_PER_TOKEN
        self.max_blocks = maxPrefixBlocksToMatch
        self.auto_tune = bool(autoTune)
        self.index = PrefixIndex(lruCapacityPerServer)
        self.lookups = 0
        self.hit_blocks = 0
        self.total_blocks = 0

    def keys(self, state, request) -> list[int]:
        keys = state.get(STATE_KEYS)
        if keys is None:
            seed = request.target_model + ("\x00" + request.cache_salt if request.cache_salt else "")
            keys = state[STATE_KEYS] = block_keys(seed, request.prompt, self.block_bytes, self.max_blocks)
        return keys

    def score(self, state, request, endpoints):
        keys = self.keys(state, request)
        if not keys:
            return [0.0] * len(endpoints)
        match = state[STATE_MATCH] = self.index.match(keys)
        n = len(keys)
        return [match.get(ep.address, 0) / n for ep in endpoints]

    def pre_request(self, state, request, result) -> None:
        keys = state.get(STATE_KEYS)
        if not keys or not result.targets:
            return
        ep = result.targets[0]
        matched = state.get(STATE_MATCH, {}).get(ep.address, 0)
        self.lookups += 1
        self.hit_blocks += matched
        self.total_blocks += len(keys)
        state[STATE_HIT_RATIO] = matched / len(keys)
        if self.auto_tune and ep.metrics.num_gpu_blocks:
            self.index.set_capacity(ep.address, ep.metrics.num_gpu_blocks)
        self.index.add(ep.address, keys)

    def endpoints_removed(self, addresses: list[str]) -> None:
        for a in addresses:
            self.index.remove_endpoint(a)
