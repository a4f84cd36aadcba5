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

try:
    from . import _prefix      # the C versions (built at install): see _prefix.c for why and how fast
except ImportError:            # pragma: no cover - a failed build; tests/unit/test_prefix_native.py fails then
    _prefix = None

_xxh64 = xxhash.xxh64_intdigest


def py_block_keys(seed_text: str, data: bytes, block_bytes: int, max_blocks: int, partial: bool = False) -> list[int]:
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


def _c_block_keys(seed_text: str, data: bytes, block_bytes: int, max_blocks: int, partial: bool = False) -> list[int]:
    return _prefix.block_keys(_xxh64(seed_text.encode()), data, block_bytes, max_blocks, partial)


block_keys = _c_block_keys if _prefix is not None else py_block_keys


class DictLRU:
    """The reference LRU (and the fallback): a plain dict is the LRU, insertion order is recency, a
    touch is delete + reinsert, and the oldest entries are the first ones; every loop runs in C."""

    __slots__ = ("capacity", "_d")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._d: dict[int, None] = {}

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key) -> bool:
        return key in self._d

    def keys(self) -> list[int]:
        return list(self._d)

    def set_capacity(self, capacity: int) -> None:
        self.capacity = capacity
        self._evict()

    def add_run(self, keys: list[int]) -> None:
        lru = self._d
        rev = keys[::-1]
        held = list(filter(lru.__contains__, rev))
        if held:
            deque(map(lru.__delitem__, held), 0)
        lru.update(dict.fromkeys(rev))        # deepest first: block 0 ends most recent
        self._evict()

    def _evict(self) -> None:
        lru = self._d
        excess = len(lru) - self.capacity
        if excess > 0:
            deque(map(lru.__delitem__, list(islice(lru, excess))), 0)

    def match_run(self, keys: list[int]) -> int:
        lru = self._d
        lo, hi = 0, len(keys)  # holds keys[:lo]; find the first index it does not hold
        while lo < hi:
            mid = (lo + hi) // 2
            if keys[mid] in lru:
                lo = mid + 1
            else:
                hi = mid
        return lo


LRU = _prefix.LRU if _prefix is not None else DictLRU


class PrefixIndex:
    """Per endpoint, an LRU set of block keys. Matching asks each endpoint's set directly (a few
    dozen endpoints, a binary search each), so there is no global key -> endpoints map to keep in
    step."""

    def __init__(self, capacity_per_endpoint: int = 31_250, lru_type=None) -> None:
        self.default_capacity = capacity_per_endpoint
        self._new = lru_type or LRU
        self._lru: dict = {}
        self._capacity: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(lru) for lru in self._lru.values())

    def set_capacity(self, endpoint: str, blocks: int) -> None:
        """Auto-tuning: the endpoint's real cache size (vllm:cache_config_info num_gpu_blocks); it
        applies from the endpoint's next add."""
        if blocks > 0:
            self._capacity[endpoint] = blocks

    def add(self, endpoint: str, keys: list[int]) -> None:
        cap = self._capacity.get(endpoint, self.default_capacity)
        lru = self._lru.get(endpoint)
        if lru is None:
            lru = self._lru[endpoint] = self._new(cap)
        elif lru.capacity != cap:
            lru.set_capacity(cap)
        lru.add_run(keys)

    def match(self, keys: list[int]) -> dict[str, int]:
        """Per endpoint, how many blocks from block 0 on it holds."""
        out: dict[str, int] = {}
        if not keys:
            return out
        first = keys[0]
        for ep, lru in self._lru.items():
            if first in lru:
                out[ep] = lru.match_run(keys)
        return out

    def occupancy(self, endpoint: str) -> float:
        """How full the endpoint's set is: entries / capacity (0 for an endpoint never added to)."""
        lru = self._lru.get(endpoint)
        return len(lru) / lru.capacity if lru is not None and lru.capacity else 0.0

    def holds(self, endpoint: str, key: int) -> bool:
        lru = self._lru.get(endpoint)
        return lru is not None and key in lru

    def remove_endpoint(self, endpoint: str) -> None:
        self._lru.pop(endpoint, None)
        self._capacity.pop(endpoint, None)

    def endpoint_blocks(self) -> dict[str, int]:
        """Blocks held per endpoint (for debug state)."""
        return {ep: len(lru) for ep, lru in self._lru.items()}
