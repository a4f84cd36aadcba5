"""burst-prefix-cache-producer (Alpha): co-locates a burst of prompt-sharing requests (e.g. the n
samples of one RL rollout prompt) so the shared prefix is prefilled once, not on every replica.

Requests wait (before scheduling) for a window of windowDurationMs (100; 1..10000) and are then
placed jointly over the ready endpoints:
- requests with an identical prompt prefix (blocks of blockSizeTokens, at most maxPrefixTokensToMatch
  tokens, else 2048 blocks) form a group; a lone request becomes a unit only when minColocateBlocks >
  0 and it shares that many leading blocks with another request of the window;
- groups are placed before single units, longer prefixes first; a group fills one replica up to
  maxPerReplica (-1: the whole group) before spilling to the next least-loaded one; a unit prefers the
  replica already holding a unit with the longest shared prefix (>= minColocateBlocks) as long as that
  replica is below its fair share of the window, else the least-loaded replica (load in requests, or
  with balanceBy tokens in prefix blocks still to prefill there; ties: fewer running, then name).
The producer reports a full prefix match on the assigned replica and none elsewhere: point a
prefix-cache-scorer at it (prefixMatchInfoProducerName). A request placed nowhere has no affinity.
Past maxBatchSize (1000; -1 unlimited) requests in one window, more requests get no affinity (counted).
The prompt is hashed as bytes (4 per token) whatever the token-producer, so a window groups alike
whether or not real tokens have arrived yet.
"""
from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter

from ...kvcache.prefix_index import block_keys
from ..framework import (ALPHA, BackgroundTask, Plugin, PrefixMatchProducer, PrepareRequest, need_int, need_str,
                         params_error, register)
from ..types import MatchInfo

log = logging.getLogger(__name__)

UNLIMITED = -1
OVERFLOW = Counter("epp_burst_prefix_overflow_total",
                   "Requests the burst prefix producer gave no affinity because the window's batch was full.")


class _Entry:
    __slots__ = ("keys", "assigned")

    def __init__(self, keys: list[int]) -> None:
        self.keys = keys
        self.assigned: str | None = None


class _Batch:
    __slots__ = ("entries", "done")

    def __init__(self, done: asyncio.Future) -> None:
        self.entries: list[_Entry] = []
        self.done = done


@register
class BurstPrefixCacheProducer(Plugin, PrefixMatchProducer, PrepareRequest, BackgroundTask):
    type_name = "burst-prefix-cache-producer"
    stability = ALPHA

    def __init__(self, name: str | None = None, windowDurationMs: int = 100, maxPerReplica: int = UNLIMITED,
                 blockSizeTokens: int = 64, maxPrefixTokensToMatch: int = 0, minColocateBlocks: int = 0,
                 maxBatchSize: int = 1000, balanceBy: str = "requests") -> None:
        super().__init__(name)
        t = self.type_name
        window = need_int(t, "windowDurationMs", windowDurationMs, 1)
        if window > 10_000:
            raise params_error(t, f"windowDurationMs must be <= 10000 (current value: {window})")
        self.window = window / 1000.0
        self.k = need_int(t, "maxPerReplica", maxPerReplica, UNLIMITED)
        if self.k == 0:
            raise params_error(t, "maxPerReplica must be -1 (unlimited) or >= 1")
        self.block_tokens = need_int(t, "blockSizeTokens", blockSizeTokens, 1)
        max_tokens = need_int(t, "maxPrefixTokensToMatch", maxPrefixTokensToMatch, 0)
        if 0 < max_tokens < self.block_tokens:
            raise params_error(t, f"maxPrefixTokensToMatch ({max_tokens}) must be 0 or >= blockSizeTokens "
                                  f"({self.block_tokens}); a smaller positive value yields zero prefix blocks")
        self.max_blocks = max_tokens // self.block_tokens if max_tokens else 2048
        self.min_colocate = need_int(t, "minColocateBlocks", minColocateBlocks, 0)
        self.max_batch = need_int(t, "maxBatchSize", maxBatchSize, UNLIMITED)
        if self.max_batch == 0:
            raise params_error(t, "maxBatchSize must be -1 (unlimited) or >= 1")
        self.by_tokens = need_str(t, "balanceBy", balanceBy or "requests", ("requests", "tokens")) == "tokens"
        self.store = None
        self._batch: _Batch | None = None
        self._key = f"burst/{self.name}"

    async def run_background(self, store) -> None:
        """Only to know the pool: the replicas a window is placed over are its ready endpoints."""
        self.store = store

    # ---------------------------------------------------------------- request side

    def prepare(self, request):
        keys = block_keys(request.target_model + ("\x00" + request.cache_salt if request.cache_salt else ""),
                          request.prompt, self.block_tokens * 4, self.max_blocks, partial=True)
        if not keys:      # nothing to co-locate (no prompt read): no affinity, no wait
            return None
        entry = _Entry(keys)
        if request.attrs is None:
            request.attrs = {}
        request.attrs[self._key] = entry
        batch = self._batch
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._batch = _Batch(loop.create_future())
            loop.call_later(self.window, self._seal, batch)
        if self.max_batch != UNLIMITED and len(batch.entries) >= self.max_batch:
            OVERFLOW.inc()
            return None
        batch.entries.append(entry)
        return self._wait(batch.done)

    @staticmethod
    async def _wait(done: asyncio.Future) -> None:
        await asyncio.shield(done)

    def match_info(self, state, request) -> MatchInfo:
        entry = request.attrs.get(self._key) if request.attrs else None
        if entry is None:
            return MatchInfo([], {}, self.block_tokens)
        matched = {entry.assigned: len(entry.keys)} if entry.assigned else {}
        return MatchInfo(entry.keys, matched, self.block_tokens)

    # ---------------------------------------------------------------- placement

    def _seal(self, batch: _Batch) -> None:
        if self._batch is batch:
            self._batch = None
        try:
            replicas = [ep for ep in self.store.snapshot() if ep.ready] if self.store is not None else []
            assign(batch.entries, replicas, self.k, self.min_colocate, self.by_tokens)
        except Exception:   # never strand the waiting requests
            log.exception("%s: placing a window of %d requests failed", self.name, len(batch.entries))
        if not batch.done.done():
            batch.done.set_result(None)


def assign(entries: list[_Entry], replicas: list, k: int, min_colocate: int, by_tokens: bool) -> None:
    """Sets entry.assigned (an endpoint address) for every entry that belongs to a placement unit."""
    if not replicas:
        return
    groups: dict[tuple, list[_Entry]] = {}
    for e in entries:
        if e.keys:
            groups.setdefault(tuple(e.keys), []).append(e)
    shared: set[tuple] = set()
    if min_colocate > 0:
        count: dict[tuple, int] = {}
        for key, members in groups.items():
            if len(key) >= min_colocate:
                count[key[:min_colocate]] = count.get(key[:min_colocate], 0) + len(members)
        shared = {key for key in groups if len(key) >= min_colocate and count[key[:min_colocate]] >= 2}
    multi = [key for key, m in groups.items() if len(m) >= 2]
    single = [key for key, m in groups.items() if len(m) == 1 and key in shared]
    if not multi and not single:
        return
    multi.sort(key=len, reverse=True)      # stable: longer prefixes first, else arrival order
    single.sort(key=len, reverse=True)
    total = sum(len(key) if by_tokens else len(groups[key]) for key in multi + single)
    fair = -(-total // len(replicas))
    holders: dict[int, set[str]] = {}      # block key -> replicas holding it in this window
    load: dict[str, int] = {}
    for key in multi + single:
        _place(groups[key], key, replicas, k, min_colocate, fair, holders, load, by_tokens)


def _shared_prefix(key: tuple, holders: dict[int, set[str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for block in key:
        held = holders.get(block)
        if not held:
            break
        for a in held:
            out[a] = out.get(a, 0) + 1
    return out


def _place(members, key, replicas, k, min_colocate, fair, holders, load, by_tokens) -> None:
    prefer = min_colocate > 0
    matches = _shared_prefix(key, holders) if prefer or by_tokens else {}
    per: dict[str, int] = {}

    def order(ep):
        return (load.get(ep.address, 0), ep.metrics.running, ep.address)

    i = 0
    while i < len(members):
        target = None
        if prefer:
            best = None
            for ep in replicas:
                a = ep.address
                if (k != UNLIMITED and per.get(a, 0) >= k) or load.get(a, 0) >= fair:
                    continue
                m = matches.get(a, 0)
                if m < min_colocate:
                    continue
                if best is None or m > best[0] or (m == best[0] and order(ep) < order(best[1])):
                    best = (m, ep)
            target = best[1] if best else None
        if target is None:
            room = [ep for ep in replicas if k == UNLIMITED or per.get(ep.address, 0) < k] or replicas
            target = min(room, key=order)
        a = target.address
        run = len(members) - i
        if k != UNLIMITED:
            run = min(run, max(1, k - per.get(a, 0)))
        for m in members[i:i + run]:
            m.assigned = a
        first = per.get(a, 0) == 0
        per[a] = per.get(a, 0) + run
        if not by_tokens:
            load[a] = load.get(a, 0) + run
        elif first:   # a replica prefills the prefix once, less what it already holds
            load[a] = load.get(a, 0) + max(0, len(key) - matches.get(a, 0))
        i += run
        prefer = False
    for a in per:
        for block in key:
            holders.setdefault(block, set()).add(a)
