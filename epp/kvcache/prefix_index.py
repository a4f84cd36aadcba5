"""Approximate prefix index: which endpoints were sent which prompt blocks, per-endpoint LRU.

Block keys are chained xxhash64 (each block's hash seeds the next), so a key names a whole prefix,
as vLLM's block hashes do; the first block is seeded with the model name (and cache salt) so
different models never share keys.

Blocks are recorded deepest first, so a block is never older in an endpoint's LRU than the blocks
after it: eviction takes the tail of a prefix before its head, and what an endpoint holds of any
prefix is always a run from block 0. That makes "how far does the match reach" monotone in the
block position, so matching is a binary search instead of a walk over every block.
"""
from __future__ import annotations

from collections import deque
from itertools import islice

import xxhash

_xxh64 = xxhash.xxh64_intdigest


def block_keys(seed_text: str, data: bytes, block_bytes: int, max_blocks: int, partial: bool = False) -> list[int]:
    """Keys of the blocks of `data`, at most max_blocks; a trailing partial block gets a key only
    when `partial` (llm-d's approximate producer hashes it, so a prompt shorter than a block still
    has one)."""
    n = (len(data) + block_bytes - 1) // block_bytes if partial else len(data) // block_bytes
    n = min(n, max_blocks)
    h = _xxh64(seed_text.encode())
    out = []
    append = out.append
    for block in [data[i:i + block_bytes] for i in range(0, n * block_bytes, block_bytes)]:
        h = _xxh64(block, h)
        append(h)
    return out


class PrefixIndex:
    """Per endpoint, an LRU set of block keys. Matching asks each endpoint's set directly (a few
    dozen endpoints, a binary search each), so there is no global key -> endpoints map to keep in
    step: adding and evicting a block is one C-level dict operation."""

    def __init__(self, capacity_per_endpoint: int = 31_250) -> None:
        self.default_capacity = capacity_per_endpoint
        self._lru: dict[str, dict[int, None]] = {}
        self._capacity: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(lru) for lru in self._lru.values())

    def set_capacity(self, endpoint: str, blocks: int) -> None:
        """Auto-tuning: the endpoint's real cache size (vllm:cache_config_info num_gpu_blocks)."""
        if blocks > 0:
            self._capacity[endpoint] = blocks

    def add(self, endpoint: str, keys: list[int]) -> None:
        lru = self._lru.get(endpoint)
        if lru is None:
            lru = self._lru[endpoint] = {}
        # A plain dict is the LRU: insertion order is recency, a touch is delete + reinsert, and the
        # oldest entries are the first ones. Twice as fast as OrderedDict here; every loop runs in C.
        rev = keys[::-1]
        held = list(filter(lru.__contains__, rev))
        if held:
            deque(map(lru.__delitem__, held), 0)
        lru.update(dict.fromkeys(rev))        # deepest first: block 0 ends most recent
        excess = len(lru) - self._capacity.get(endpoint, self.default_capacity)
        if excess > 0:
            deque(map(lru.__delitem__, list(islice(lru, excess))), 0)

    def match(self, keys: list[int]) -> dict[str, int]:
        """Per endpoint, how many blocks from block 0 on it holds."""
        out: dict[str, int] = {}
        if not keys:
            return out
        first = keys[0]
        for ep, lru in self._lru.items():
            if first not in lru:
                continue
            lo, hi = 1, len(keys)  # ep holds keys[:lo]; find the first index it does not hold
            while lo < hi:
                mid = (lo + hi) // 2
                if keys[mid] in lru:
                    lo = mid + 1
                else:
                    hi = mid
            out[ep] = lo
        return out

    def holds(self, endpoint: str, key: int) -> bool:
        lru = self._lru.get(endpoint)
        return lru is not None and key in lru

    def remove_endpoint(self, endpoint: str) -> None:
        self._lru.pop(endpoint, None)
        self._capacity.pop(endpoint, None)
