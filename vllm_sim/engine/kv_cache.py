"""Paged KV cache with prefix caching, as vLLM V1 keeps it.

Blocks of `block_size` token slots. A block becomes reusable once full: its key chains the parent's key
with its token ids (and LoRA id), so equal keys mean equal whole prefixes. Blocks nobody references sit in
a free queue in LRU order, still holding their cached content until a new allocation evicts them; a
request that hits a free cached block takes it back out of the queue. Evicted GPU blocks may spill to a
CPU tier (itself LRU). Every change to the set of cached keys is reported as a KV event, so a reader that
replays the events holds exactly the cache's content per tier.
"""
from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

import xxhash

from .request import Request


def block_key(parent: int | None, tokens: list[int] | tuple[int, ...], lora_id: int = 0, seed: int = 0) -> int:
    """64-bit chained key of one full block (xxh3 over parent key, token ids, LoRA id)."""
    h = xxhash.xxh3_64(seed=seed)
    h.update(struct.pack("<QI", parent if parent is not None else 0xFFFFFFFFFFFFFFFF, lora_id))
    h.update(struct.pack(f"<{len(tokens)}I", *tokens))
    return h.intdigest()


@dataclass(frozen=True)
class Stored:
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str


@dataclass(frozen=True)
class Removed:
    block_hashes: list[int]
    medium: str


@dataclass(frozen=True)
class Cleared:
    pass


class DoubleFree(AssertionError):
    pass


class KVCache:
    def __init__(self, num_blocks: int, block_size: int = 16, offload_blocks: int = 0, hash_seed: int = 0,
                 enable_caching: bool = True):
        self.enable_caching = enable_caching
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.hash_seed = hash_seed
        self.ref_cnt = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.block_meta: dict[int, tuple[int | None, tuple[int, ...], int]] = {}   # key -> parent, tokens, lora
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[int, int] = {}                      # key -> block id on GPU
        self.offload_blocks = offload_blocks
        self.cpu: OrderedDict[int, None] = OrderedDict()     # key -> (LRU order), CPU tier
        self.req_blocks: dict[str, list[int]] = {}
        self.req_committed: dict[str, int] = {}              # how many leading blocks are keyed
        self.events: list = []
        self.queries = 0   # tokens looked up (vLLM's prefix_cache_queries counts tokens)
        self.hits = 0

    # ---- keys -------------------------------------------------------------------------------------
    def request_keys(self, req: Request, upto_tokens: int) -> list[int]:
        """Chained keys of the request's full blocks within its first `upto_tokens` tokens (memoised)."""
        keys = req._block_hashes
        bs = self.block_size
        n = upto_tokens // bs
        while len(keys) < n:
            i = len(keys)
            toks = req.tokens(i * bs, (i + 1) * bs)
            keys.append(block_key(keys[-1] if keys else None, toks, req.lora_id, self.hash_seed))
        return keys[:n]

    # ---- lookup -----------------------------------------------------------------------------------
    def lookup(self, req: Request) -> tuple[list[int], list[int]]:
        """Longest cached prefix: (GPU block ids, then CPU-tier keys continuing it). Leaves at least
        one token to compute, as the engine must run the last token to sample."""
        if not self.enable_caching:
            return [], []
        max_blocks = (req.num_tokens - 1) // self.block_size
        keys = self.request_keys(req, max_blocks * self.block_size)
        gpu: list[int] = []
        cpu: list[int] = []
        for k in keys:
            if not cpu and k in self.cached:
                gpu.append(self.cached[k])
            elif k in self.cpu:
                cpu.append(k)
            else:
                break
        return gpu, cpu

    def record_query(self, num_tokens: int, hit_tokens: int) -> None:
        self.queries += num_tokens
        self.hits += hit_tokens

    # ---- allocation -------------------------------------------------------------------------------
    def num_free(self) -> int:
        return len(self.free)

    def can_allocate(self, req: Request, total_tokens: int, hits: list[int] = ()) -> bool:
        have = len(self.req_blocks.get(req.request_id, ())) + len(hits)
        need = -(-total_tokens // self.block_size) - have
        hits_in_free = sum(1 for b in hits if b in self.free)
        return need <= len(self.free) - hits_in_free

    def allocate(self, req: Request, total_tokens: int, hits: list[int] = ()) -> bool:
        """Give the request enough blocks for `total_tokens`, first taking the hit blocks."""
        if not hits:    # the common case in a decode step: the blocks it holds already suffice
            held = self.req_blocks.get(req.request_id)
            if held is not None and len(held) * self.block_size >= total_tokens:
                return True
        if not self.can_allocate(req, total_tokens, hits):
            return False
        blocks = self.req_blocks.setdefault(req.request_id, [])
        self.req_committed.setdefault(req.request_id, 0)
        for b in hits:
            if self.ref_cnt[b] == 0:
                del self.free[b]
            self.ref_cnt[b] += 1
            blocks.append(b)
        if hits:
            self.req_committed[req.request_id] = len(blocks)
        need = -(-total_tokens // self.block_size) - len(blocks)
        for _ in range(need):
            b, _ = self.free.popitem(last=False)
            self._evict(b)
            self.ref_cnt[b] = 1
            blocks.append(b)
        return True

    def _evict(self, b: int) -> None:
        key = self.block_hash[b]
        if key is None:
            return
        self.block_hash[b] = None
        del self.cached[key]
        self.events.append(Removed([key], "GPU"))
        if self.offload_blocks > 0:
            self._offload(key)
        else:
            self.block_meta.pop(key, None)

    def _offload(self, key: int) -> None:
        if key in self.cpu:
            self.cpu.move_to_end(key)
            return
        if len(self.cpu) >= self.offload_blocks:
            old, _ = self.cpu.popitem(last=False)
            self.events.append(Removed([old], "CPU"))
            if old not in self.cached:
                self.block_meta.pop(old, None)
        self.cpu[key] = None
        parent, toks, lora = self.block_meta[key]
        self.events.append(Stored([key], parent, list(toks), self.block_size, lora or None, "CPU"))

    def touch_cpu(self, keys: list[int]) -> None:
        for k in keys:
            if k in self.cpu:
                self.cpu.move_to_end(k)

    def commit(self, req: Request) -> list[tuple[int, int, int]]:
        """Key the request's blocks that are now full of computed tokens. Returns (index, block id, key)
        of each newly full block so callers can write block content."""
        rid = req.request_id
        blocks = self.req_blocks.get(rid)
        if not blocks:
            return []
        done = self.req_committed.get(rid, 0)
        full = min(req.num_computed_tokens // self.block_size, len(blocks))
        if full <= done:
            return []
        keys = self.request_keys(req, full * self.block_size)
        out = []
        new_keys: list[int] = []
        for i in range(done, full):
            b, k = blocks[i], keys[i]
            out.append((i, b, k))
            if not self.enable_caching or k in self.cached or self.block_hash[b] is not None:
                continue   # same content already cached in another block: keep one copy keyed
            self.block_hash[b] = k
            self.cached[k] = b
            toks = tuple(req.tokens(i * self.block_size, (i + 1) * self.block_size))
            self.block_meta[k] = (keys[i - 1] if i else None, toks, req.lora_id)
            new_keys.append(k)
        if new_keys:
            # vLLM batches the newly full blocks of one request into one BlockStored; split on gaps
            self._emit_stored(new_keys)
        self.req_committed[rid] = full
        return out

    def _emit_stored(self, new_keys: list[int]) -> None:
        run: list[int] = []
        run_parent = None
        for k in new_keys:
            parent, toks, lora = self.block_meta[k]
            if run and parent == run[-1]:
                run.append(k)
                continue
            if run:
                self._flush_run(run, run_parent)
            run, run_parent = [k], parent
        if run:
            self._flush_run(run, run_parent)

    def _flush_run(self, run: list[int], parent: int | None) -> None:
        toks: list[int] = []
        lora = 0
        for k in run:
            _, t, lora = self.block_meta[k]
            toks.extend(t)
        self.events.append(Stored(list(run), parent, toks, self.block_size, lora or None, "GPU"))

    def free_request(self, req: Request) -> None:
        """Drop the request's references; blocks reaching zero join the free queue, tail blocks first
        so that the end of a sequence is evicted before its shared prefix."""
        blocks = self.req_blocks.pop(req.request_id, None)
        self.req_committed.pop(req.request_id, None)
        if not blocks:
            return
        for b in reversed(blocks):
            if self.ref_cnt[b] <= 0:
                raise DoubleFree(f"block {b} freed twice")
            self.ref_cnt[b] -= 1
            if self.ref_cnt[b] == 0:
                self.free[b] = None

    def blocks_of(self, request_id: str) -> list[int]:
        return list(self.req_blocks.get(request_id, ()))

    def usage(self) -> float:
        return 1.0 - len(self.free) / self.num_blocks if self.num_blocks else 0.0

    def reset(self) -> bool:
        """vLLM's reset_prefix_cache: only when no block is in use."""
        if len(self.free) != self.num_blocks:
            return False
        for b in range(self.num_blocks):
            self.block_hash[b] = None
        self.cached.clear()
        self.cpu.clear()
        self.block_meta.clear()
        self.events.append(Cleared())
        return True

    def drain_events(self) -> list:
        ev, self.events = self.events, []
        return ev

    def snapshot(self) -> dict[str, list[int]]:
        return {"GPU": sorted(self.cached), "CPU": sorted(self.cpu)}

    def check_invariants(self) -> None:
        refs = [0] * self.num_blocks
        for blocks in self.req_blocks.values():
            for b in blocks:
                refs[b] += 1
        assert refs == self.ref_cnt, "reference counts disagree with request block lists"
        for b in range(self.num_blocks):
            assert (b in self.free) == (self.ref_cnt[b] == 0), f"block {b} free-queue membership wrong"
        for k, b in self.cached.items():
            assert self.block_hash[b] == k
        assert sum(1 for h in self.block_hash if h is not None) == len(self.cached)
        assert len(self.cpu) <= self.offload_blocks
