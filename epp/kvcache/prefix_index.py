"""Approximate prefix index: which endpoints were sent which prompt blocks, per-endpoint LRU.

Block keys are chained xxhash64 (each block's hash seeds the next), so a key names a whole prefix,
as vLLM's block hashes do; the first block is seeded with the model name (and cache salt) so
different models never share keys.
"""
from __future__ import annotations

from collections import OrderedDict

import xxhash

_xxh64 = xxhash.xxh64_intdigest


def block_keys(seed_text: str, data: bytes, block_bytes: int, max_blocks: int) -> list[int]:
    """Keys of the full blocks of `data` (a trailing partial block has no key), at most max_blocks."""
    n = min(len(data) // block_bytes, max_blocks)
    h = _xxh64(seed_text.encode())
    out = [0] * n
    mv = memoryview(data)
    for i in range(n):
        h = _xxh64(mv[i * block_bytes:(i + 1) * block_bytes], h)
        out[i] = h
    return out


class PrefixIndex:
    def __init__(self, capacity_per_endpoint: int = 31_250) -> None:
        self.default_capacity = capacity_per_endpoint
        self._owners: dict[int, set[str]] = {}
        self._lru: dict[str, OrderedDict[int, None]] = {}
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
            lru = self._lru[endpoint] = OrderedDict()
        owners = self._owners
        for k in keys:
            if k in lru:
                lru.move_to_end(k)
            else:
                lru[k] = None
                s = owners.get(k)
                if s is None:
                    owners[k] = {endpoint}
                else:
                    s.add(endpoint)
        cap = self._capacity.get(endpoint, self.default_capacity)
        while len(lru) > cap:
            old, _ = lru.popitem(last=False)
            s = owners.get(old)
            if s is not None:
                s.discard(endpoint)
                if not s:
                    del owners[old]

    def match(self, keys: list[int]) -> dict[str, int]:
        """Per endpoint, how many blocks from block 0 on it holds consecutively."""
        counts: dict[str, int] = {}
        owners = self._owners
        for i, k in enumerate(keys):
            holders = owners.get(k)
            if not holders:
                break
            advanced = False
            for ep in holders:
                if counts.get(ep, 0) == i:
                    counts[ep] = i + 1
                    advanced = True
            if not advanced:
                break
        return counts

    def remove_endpoint(self, endpoint: str) -> None:
        lru = self._lru.pop(endpoint, None)
        self._capacity.pop(endpoint, None)
        if not lru:
            return
        for k in lru:
            s = self._owners.get(k)
            if s is not None:
                s.discard(endpoint)
                if not s:
                    del self._owners[k]
