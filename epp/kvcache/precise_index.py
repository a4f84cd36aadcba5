"""Precise prefix index: which pod holds which KV block, per tier, as the pods' own KV events tell.

Fed decoded vLLM KV events (BlockStored / BlockRemoved / AllBlocksCleared) and asked on the request
path "how many leading blocks of this prompt does each pod hold". Pure Python, no I/O, no asyncio.

Keys. We never look requests up by the engine's block hashes: those depend on the engine's hash
algorithm, its seed (PYTHONHASHSEED / NONE_HASH) and extra keys we cannot reproduce. Instead each full
block of `block_size` tokens gets OUR key: xxhash64 of its token ids (little-endian uint32) seeded by
the previous block's key, the first block seeded by a hash of `hash_seed`, the model and the LoRA
adapter. BlockStored carries the tokens, so every engine key it announces is mapped to our key
computed from the parent's our-key; BlockRemoved is then applied through that mapping. Two pods
(or engines with different seeds or hash algorithms) storing the same content land on the same key.

The engine-key map is keyed by the engine key XOR the (model, LoRA) root, because engines serving
different models with the same hash seed give the same engine key to the same tokens. A BlockRemoved
does not name the model, so a removal tries each root the pod stored under (one, or a few with LoRA).

Data structures (plain dicts / sets / ints, so the hot operations run in C):
  entries   OrderedDict  our key -> pod bitmask (any tier); LRU order, oldest first. Never holds 0.
  tiers     dict         our key -> [pod bitmask per tier index], only for keys some pod holds in a
                         tier other than GPU; a key absent here is held in GPU by the pods of its mask
  lossy     dict         tiered key -> mask of its holders that lack the GPU copy (only those keys can
                         weigh less than the GPU weight when GPU is the best tier); not empty masks
  emap      dict         engine key ^ root -> our key, while some pod holds the our key
  rev       dict         our key -> engine key ^ root (an int, or a tuple when several engines' keys
                         name the same content), to free emap entries together with the our key
  ghost     OrderedDict  a bounded memory of mappings whose block nobody holds any more, so that a
                         BlockStored naming a just-removed parent can still be placed
  pod_keys  dict         pod bit -> set of our keys the pod holds (clear_pod, eviction bookkeeping)
  spec      dict         our key -> {pod bit: expiry}, with spec_mask: our key -> OR of those bits;
                         a FIFO of (expiry, key, bit) purges them lazily
Each pod gets one bit of a Python int (a pod that leaves is scrubbed and its bit reused), so matching
64 pods is an AND per block: the masks of all keys (one C-level map over dict.get), their running
AND (itertools.accumulate), and the few positions where it shrinks (bisect on that monotone run).
Python-level work is per pod that drops out, not per (pod, block).

LRU: stores insert a run deepest block first and then touch the parent; matches touch the matched
keys deepest first (deferred to the next event call, which is where evictions happen). So block 0 of
a prefix in use is more recent than its tail, and eviction takes tails before heads. Evicting a key
drops its pod holdings and engine-key mappings.
"""
from __future__ import annotations

import array
import struct
import sys
import time
from bisect import bisect_left
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Sequence
from itertools import accumulate, compress, islice, repeat
from operator import and_, invert, or_
from typing import NamedTuple

import xxhash

from .block_hash import block_hash_key

_xxh64 = xxhash.xxh64_intdigest
GPU = "GPU"

if array.array("I").itemsize == 4:
    if sys.byteorder == "little":
        def _token_bytes(token_ids) -> bytes:
            return array.array("I", token_ids).tobytes()
    else:  # pragma: no cover - big-endian hosts
        def _token_bytes(token_ids) -> bytes:
            a = array.array("I", token_ids)
            a.byteswap()
            return a.tobytes()
else:  # pragma: no cover - exotic C ABIs
    def _token_bytes(token_ids) -> bytes:
        return struct.pack(f"<{len(token_ids)}I", *token_ids)


def _engine_keys(hashes: Sequence, root: int) -> list[int]:
    """Engine keys as ints, XOR the (model, LoRA) root."""
    try:
        return [h ^ root for h in hashes]
    except TypeError:
        return [block_hash_key(h) ^ root for h in hashes]


class MatchResult(NamedTuple):
    blocks: int        # consecutive blocks from block 0 the pod holds (any tier, or speculatively)
    weighted: float    # sum over those blocks of the best tier weight the pod holds each one in


_result = tuple.__new__     # MatchResult without the Python-level NamedTuple __new__
_ZERO = MatchResult(0, 0.0)


class PreciseIndex:
    GHOST_MAPPINGS = 65_536          # engine-key mappings remembered after their block is gone
    MAX_SPECULATIVE = 1_000_000      # (pod, key) speculative entries at most (the oldest go first)

    def __init__(self, block_size: int = 16, max_keys: int = 10_000_000, tier_weights: dict[str, float] | None = None,
                 speculative_ttl: float = 2.0, hash_seed: str = "") -> None:
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        if max_keys <= 0:
            raise ValueError("max_keys must be positive")
        self.block_size = block_size
        self.max_keys = max_keys
        self.speculative_ttl = float(speculative_ttl)
        self.hash_seed = hash_seed
        weights = ({GPU: 1.0, "CPU": 0.8} if tier_weights is None
                   else {str(k).upper(): float(v) for k, v in tier_weights.items()})
        self._configured = weights
        self._unknown_weight = min(weights.values()) if weights else 1.0   # a tier nobody configured
        self._w_gpu = weights.get(GPU, 1.0)
        self._tier_names: list[str] = []
        self._weights: list[float] = []
        self._tier_idx: dict[str | None, int] = {None: 0}   # medium as reported -> tier index
        self._order: list[tuple[int, float]] = []           # (tier, weight - GPU weight), best first
        self._gpu_top = True
        self._tier(GPU)
        for name in weights:
            self._tier(name)

        self._entries: OrderedDict[int, int] = OrderedDict()
        self._tiers: dict[int, list[int]] = {}
        self._lossy: dict[int, int] = {}
        self._touch: deque[list[int]] = deque()    # matched prefixes whose LRU touch is pending
        self._emap: dict[int, int] = {}
        self._rev: dict[int, int | tuple[int, ...]] = {}
        self._ghost: OrderedDict[int, int] = OrderedDict()
        self._roots: dict[tuple[str, str], int] = {}
        self._pod_bit: dict[str, int] = {}
        self._bit_pod: dict[int, str] = {}
        self._free_bits: list[int] = []
        self._next_bit = 0
        self._pod_keys: dict[int, set[int]] = {}
        self._pod_roots: dict[int, list[int]] = {}
        self._spec: dict[int, dict[int, float]] = {}
        self._spec_mask: dict[int, int] = {}
        self._spec_q: deque[tuple[float, int, int]] = deque()
        self._spec_sorted = True         # FIFO in expiry order (add_speculative saw non-decreasing times)
        self.unplaceable = 0
        self.mismatches = 0
        self.malformed = 0
        self.evictions = 0

    # ---- keys -------------------------------------------------------------------------------------
    def _root(self, model: str, lora: str | None) -> int:
        k = (model, lora or "")
        r = self._roots.get(k)
        if r is None:
            r = self._roots[k] = _xxh64(f"{self.hash_seed}\x00{model}\x00{lora or ''}".encode())
        return r

    def _chain(self, parent: int, token_ids: Sequence[int], n: int) -> list[int]:
        bs = self.block_size
        step = bs * 4
        data = _token_bytes(token_ids if len(token_ids) == n * bs else token_ids[:n * bs])
        out = []
        append = out.append
        h = parent
        for off in range(0, n * step, step):
            h = _xxh64(data[off:off + step], h)
            append(h)
        return out

    def request_keys(self, token_ids: Sequence[int], model: str = "", lora: str | None = None,
                     max_blocks: int = 0) -> list[int]:
        """Our chained keys of the prompt's full blocks (a trailing partial block has none), at most
        `max_blocks` of them (0: no cap)."""
        n = len(token_ids) // self.block_size
        if 0 < max_blocks < n:
            n = max_blocks
        if n <= 0:
            return []
        return self._chain(self._root(model, lora), token_ids, n)

    # ---- tiers and pods -----------------------------------------------------------------------------
    def _tier(self, medium: str | None) -> int:
        t = self._tier_idx.get(medium)
        if t is not None:
            return t
        name = str(medium).upper()
        if name in self._tier_names:
            t = self._tier_names.index(name)
        else:
            t = len(self._tier_names)
            self._tier_names.append(name)
            self._weights.append(self._w_gpu if name == GPU else self._configured.get(name, self._unknown_weight))
            order = sorted(range(len(self._weights)), key=lambda i: (-self._weights[i], i))
            self._order = [(i, self._weights[i] - self._w_gpu) for i in order]
            self._gpu_top = all(w <= self._w_gpu for w in self._weights)
        self._tier_idx[medium] = t
        return t

    def _bit(self, pod: str) -> int:
        b = self._pod_bit.get(pod)
        if b is None:
            if self._free_bits:
                b = self._free_bits.pop()
            else:
                b = 1 << self._next_bit
                self._next_bit += 1
            self._pod_bit[pod] = b
            self._bit_pod[b] = pod
            self._pod_keys[b] = set()
            self._pod_roots[b] = []
        return b

    # ---- events ---------------------------------------------------------------------------------------
    def apply_stored(self, pod: str, engine_hashes: Sequence[int], parent_engine_hash: int | None,
                     token_ids: Sequence[int], block_size: int, medium: str | None, model: str = "",
                     lora: str | None = None) -> None:
        """BlockStored: `pod` now holds, in tier `medium` (None: GPU), the consecutive full blocks whose
        tokens are `token_ids`, chained after the block the engine calls `parent_engine_hash` (None:
        they start at block 0). A parent we cannot resolve, or another block size, is counted and the
        event skipped: guessing would put blocks at the wrong place in a chain."""
        if self._touch:
            self._flush_touches()
        n = len(engine_hashes)
        if block_size != self.block_size:
            self.mismatches += 1
            return
        if n == 0:
            return
        if len(token_ids) != n * block_size:
            self.malformed += 1
            return
        root = self._root(model, lora)
        try:
            ekeys = _engine_keys(engine_hashes, root)
            if parent_engine_hash is None:
                parent = root
            else:
                pe = block_hash_key(parent_engine_hash) ^ root
                parent = self._emap.get(pe)
                if parent is None:
                    parent = self._ghost.get(pe)
                    if parent is None:
                        self.unplaceable += 1
                        return
            keys = self._chain(parent, token_ids, n)
        except (TypeError, ValueError, OverflowError):     # hashes or token ids that are no uint64 / uint32
            self.malformed += 1
            return
        t = self._tier(medium)
        b = self._bit(pod)
        roots = self._pod_roots[b]
        if root not in roots:
            roots.append(root)
        entries, tiers, emap, rev, lossy = self._entries, self._tiers, self._emap, self._rev, self._lossy
        get = entries.get
        held = self._pod_keys[b]
        spec = self._spec
        ntiers = len(self._weights)
        for i in range(n - 1, -1, -1):      # deepest first: block 0 of the run ends most recently used
            k = keys[i]
            e = ekeys[i]
            m = get(k)
            if m is None:
                entries[k] = b
                if t:
                    tm = [0] * ntiers
                    tm[t] = b
                    tiers[k] = tm
                    lossy[k] = b
                held.add(k)
                emap[e] = k
                rev[k] = e
            else:
                entries.move_to_end(k)
                tm = tiers.get(k)
                if tm is None and t == 0:
                    if not m & b:
                        entries[k] = m | b
                        held.add(k)
                else:
                    if tm is None:
                        tm = tiers[k] = [m] + [0] * (ntiers - 1)
                    elif len(tm) < ntiers:
                        tm.extend([0] * (ntiers - len(tm)))
                    tm[t] |= b
                    if not m & b:
                        m |= b
                        entries[k] = m
                        held.add(k)
                    if tm[0] == m:
                        lossy.pop(k, None)
                    else:
                        lossy[k] = m & ~tm[0]
                if emap.get(e) != k:
                    self._map(e, k)
            if spec:
                s = spec.get(k)
                if s is not None and b in s:    # a real event confirms (or replaces) the guess
                    self._spec_del(k, b)
        if parent_engine_hash is not None and parent in entries:
            entries.move_to_end(parent)
        if len(entries) > self.max_keys:
            self._evict(len(entries) - self.max_keys)

    def _map(self, e: int, k: int) -> None:
        """Point engine key `e` at our key `k` (it pointed elsewhere, or nowhere)."""
        rev = self._rev
        cur = self._emap.get(e)
        if cur is not None:        # the same engine key announced with other content: the latest wins
            r = rev.get(cur)
            if r == e:
                del rev[cur]
            elif type(r) is tuple:
                r = tuple(x for x in r if x != e)
                rev[cur] = r if len(r) > 1 else r[0]
        self._emap[e] = k
        r = rev.get(k)
        if r is None:
            rev[k] = e
        elif type(r) is int:
            if r != e:
                rev[k] = (r, e)
        elif e not in r:
            rev[k] = r + (e,)

    def _forget(self, k: int) -> None:
        """k has left `entries`: drop its tiers and engine-key mappings (these go to the ghost)."""
        if self._tiers.pop(k, None) is not None:
            self._lossy.pop(k, None)
        r = self._rev.pop(k, None)
        if r is None:
            return
        emap, ghost = self._emap, self._ghost
        if type(r) is int:
            if emap.get(r) == k:
                del emap[r]
                ghost[r] = k
        else:
            for e in r:
                if emap.get(e) == k:
                    del emap[e]
                    ghost[e] = k
        self._trim_ghosts()

    def _trim_ghosts(self) -> None:
        ghost = self._ghost
        if len(ghost) > self.GHOST_MAPPINGS:
            pop = ghost.popitem
            for _ in range(len(ghost) - self.GHOST_MAPPINGS):
                pop(False)

    def _drop(self, k: int) -> None:
        del self._entries[k]
        self._forget(k)

    def _evict(self, count: int) -> None:
        """LRU bound: drop the `count` least recently used keys with their holdings and mappings
        (_drop inlined: this runs once per stored block when the index is full)."""
        pop = self._entries.popitem
        pod_keys = self._pod_keys
        tiers, lossy = self._tiers, self._lossy
        rev_pop = self._rev.pop
        emap, ghost = self._emap, self._ghost
        emap_get = emap.get
        for _ in range(count):
            k, m = pop(False)
            if m & (m - 1):
                while m:
                    low = m & -m
                    pod_keys[low].discard(k)
                    m ^= low
            else:
                pod_keys[m].discard(k)
            if tiers and tiers.pop(k, None) is not None:
                lossy.pop(k, None)
            r = rev_pop(k, None)
            if type(r) is int:
                if emap_get(r) == k:
                    del emap[r]
                    ghost[r] = k
            elif r is not None:
                for e in r:
                    if emap_get(e) == k:
                        del emap[e]
                        ghost[e] = k
        self._trim_ghosts()
        self.evictions += count

    def _retier(self, k: int, tm: list[int], m: int) -> None:
        """After a holder left one of k's tiers (k still held, `m` its any-tier mask)."""
        if not any(tm[1:]):
            del self._tiers[k]              # GPU only again: the mask says it all
            self._lossy.pop(k, None)
        elif tm[0] == m:
            self._lossy.pop(k, None)
        else:
            self._lossy[k] = m & ~tm[0]

    def _unhold(self, b: int, k: int, t: int) -> None:
        entries = self._entries
        m = entries.get(k)
        if m is None or not m & b:
            return
        tm = self._tiers.get(k)
        if tm is None:
            if t != 0:
                return
            nm = m & ~b
        else:
            if t >= len(tm) or not tm[t] & b:
                return
            tm[t] &= ~b
            nm = 0
            for x in tm:
                nm |= x
            if nm:
                self._retier(k, tm, nm)
        if not nm & b:
            self._pod_keys[b].discard(k)
        if nm:
            entries[k] = nm                 # an update, not a touch: LRU order unchanged
        else:
            self._drop(k)

    def apply_removed(self, pod: str, engine_hashes: Sequence[int], medium: str | None) -> None:
        """BlockRemoved: `pod` no longer holds these blocks in tier `medium` (None: GPU); its other
        tiers and other pods keep theirs. Unknown engine keys are ignored."""
        if self._touch:
            self._flush_touches()
        b = self._pod_bit.get(pod)
        if b is None:
            return
        t = self._tier(medium)
        try:
            ehs = _engine_keys(engine_hashes, 0)
        except (TypeError, ValueError, OverflowError):
            self.malformed += 1
            return
        emap = self._emap
        unhold = self._unhold
        for r in self._pod_roots[b]:        # one root, or a few for a pod serving LoRA adapters
            for k in map(emap.get, [e ^ r for e in ehs]):
                if k is not None:
                    unhold(b, k, t)

    def clear_pod(self, pod: str) -> None:
        """AllBlocksCleared, a sequence gap without replay, or the pod left the pool: drop all it holds
        (speculative entries included) and free its bit for reuse."""
        if self._touch:
            self._flush_touches()
        b = self._pod_bit.pop(pod, None)
        if b is None:
            return
        nb = ~b
        entries, tiers = self._entries, self._tiers
        for k in self._pod_keys.pop(b):
            nm = entries[k] & nb
            tm = tiers.get(k)
            if tm is not None:
                for i, x in enumerate(tm):
                    tm[i] = x & nb
                if nm:
                    self._retier(k, tm, nm)
            if nm:
                entries[k] = nm
            else:
                self._drop(k)
        for k in [k for k, m in self._spec_mask.items() if m & b]:
            self._spec_del(k, b)
        del self._pod_roots[b]
        del self._bit_pod[b]
        self._free_bits.append(b)

    # ---- speculative entries ------------------------------------------------------------------------------
    def _spec_del(self, k: int, b: int) -> None:
        s = self._spec[k]
        del s[b]
        if s:
            self._spec_mask[k] &= ~b
        else:
            del self._spec[k]
            del self._spec_mask[k]

    def _purge(self, now: float) -> None:
        q = self._spec_q
        spec = self._spec
        while q and q[0][0] <= now:
            exp, k, b = q.popleft()
            s = spec.get(k)
            if s is not None and s.get(b) == exp:
                self._spec_del(k, b)
        if not q:
            self._spec_sorted = True

    def add_speculative(self, pod: str, keys: Sequence[int], now: float) -> None:
        """At routing time: `pod` will soon hold `keys`; they count (as GPU) in match() until
        now + speculative_ttl, or until a real BlockStored of that key from that pod."""
        self._purge(now)
        if not keys or self.speculative_ttl <= 0:
            return
        b = self._bit(pod)
        exp = now + self.speculative_ttl
        spec, smask, q = self._spec, self._spec_mask, self._spec_q
        if q and exp < q[-1][0]:
            self._spec_sorted = False
        get, tiers = self._entries.get, self._tiers
        for k in keys:
            if get(k, 0) & b:
                tm = tiers.get(k)
                if tm is None or tm[0] & b:
                    continue            # already held in GPU: nothing to guess
            s = spec.get(k)
            if s is None:
                spec[k] = {b: exp}
                smask[k] = b
            else:
                s[b] = exp
                smask[k] |= b
            q.append((exp, k, b))
        if len(q) > self.MAX_SPECULATIVE:
            for _ in range(len(q) - self.MAX_SPECULATIVE):
                exp, k, b = q.popleft()
                s = spec.get(k)
                if s is not None and s.get(b) == exp:
                    self._spec_del(k, b)

    # ---- matching ---------------------------------------------------------------------------------------
    def match(self, keys: Sequence[int], pods: Iterable[str] | None = None,
              now: float | None = None) -> dict[str, MatchResult]:
        """Per pod: the run of blocks from block 0 it holds (any tier, or a live speculative entry), and
        that run weighted by the best tier it holds each block in (speculative = GPU). With `pods`, the
        answer has every one of them (zeros for misses); without, only the pods holding block 0.
        `now` (default time.monotonic()) is only needed for speculative entries. Touches the matched
        keys in the LRU; the touch itself is deferred off the request path, to the next event call (it
        must precede any eviction, and only events evict) or past 32 pending matches."""
        out: dict[str, MatchResult] = {}
        if pods is not None:
            pb = self._pod_bit
            filt = 0
            for p in pods:
                filt |= pb.get(p, 0)
                out[p] = _ZERO
        else:
            filt = -1
        n = len(keys)
        if not n or not filt:
            return out
        entries = self._entries
        smask = None
        if self._spec:
            if now is None:
                now = time.monotonic()
            self._purge(now)
            if self._spec:
                smask = self._spec_mask if self._spec_sorted else {
                    k: m for k, m in ((k, self._live(s, now)) for k, s in self._spec.items()) if m}
        k0 = keys[0]
        alive = entries.get(k0, 0)
        if smask:
            alive |= smask.get(k0, 0)
        alive &= filt
        if not alive:
            return out
        masks = map(entries.get, keys, repeat(0, n))
        sms = None
        if smask:
            sms = list(map(smask.get, keys, repeat(0, n)))
            if any(sms):
                masks = map(or_, masks, sms)
            else:
                sms = None
        run = list(accumulate(masks, and_, initial=alive))    # run[i + 1]: pods holding blocks 0..i
        # `run` only loses bits: find where it changes by bisection, one step per distinct value
        ends: dict[int, int] = {}
        p = 0
        while True:
            v = run[p]
            j = bisect_left(run, True, p + 1, n + 1, key=v.__ne__)
            if j > n:               # v's pods hold all n blocks
                depth = n
                while v:
                    low = v & -v
                    ends[low] = n
                    v ^= low
                break
            gone = v ^ run[j]       # these hold blocks 0 .. j-2
            while gone:
                low = gone & -gone
                ends[low] = j - 1
                gone ^= low
            if not run[j]:
                depth = j - 1
                break
            p = j
        # weights: only keys some matching pod holds in a non-GPU tier alone need a look
        delta: dict[int, float] = {}
        if depth and self._lossy:
            if self._gpu_top and len(self._order) == 2:
                # one tier below GPU: a pod holding a block without its GPU copy weighs that tier's
                # weight. Count, per mask of such pods, the blocks (all in C), then spread per pod.
                lossy = list(map(self._lossy.get, keys, repeat(0, depth)))
                if any(lossy):
                    lm = map(and_, lossy, islice(run, 1, None))
                    if sms:
                        lm = map(and_, lm, map(invert, sms))    # speculative counts as GPU
                    d = self._order[1][1]
                    for mask, c in Counter(filter(None, lm)).items():
                        d_mask = c * d
                        while mask:
                            low = mask & -mask
                            delta[low] = delta.get(low, 0.0) + d_mask
                            mask ^= low
            else:
                self._weigh(keys, depth, run, sms, delta)
        w = self._w_gpu
        names = self._bit_pod
        for low, nb in ends.items():
            if nb:
                out[names[low]] = _result(MatchResult, (nb, nb * w + delta[low] if low in delta else nb * w))
        if depth:       # the LRU touch is deferred to the next event (before any eviction can happen)
            touch = self._touch
            touch.append(keys[:depth])
            if len(touch) > 32:
                self._flush_touches(1)
        return out

    def _weigh(self, keys: Sequence[int], depth: int, run: list[int], sms: list[int] | None,
               delta: dict[int, float]) -> None:
        """General tier weighting (several tiers below GPU, or a tier weighing more than GPU)."""
        tiers = self._tiers
        order = self._order
        gpu_top = self._gpu_top
        candidates = self._lossy if gpu_top else tiers
        by_mask: dict[int, float] = {}
        for i in compress(range(depth), map(candidates.__contains__, keys)):
            a = run[i + 1]
            tm = tiers[keys[i]]
            sm = sms[i] if sms else 0
            if gpu_top and not a & ~(tm[0] | sm):
                continue
            rest = a
            ntm = len(tm)
            for t, d in order:          # best tier first: each pod weighs its best tier
                if t >= ntm:
                    continue
                hit = rest & (tm[t] | sm if t == 0 else tm[t])
                if hit:
                    rest ^= hit
                    if d:
                        by_mask[hit] = by_mask.get(hit, 0.0) + d
                    if not rest:
                        break
        for mask, d in by_mask.items():
            while mask:
                low = mask & -mask
                delta[low] = delta.get(low, 0.0) + d
                mask ^= low

    def _flush_touches(self, count: int = 0) -> None:
        """Apply pending LRU touches of matched prefixes (all, or the `count` oldest), deepest key
        first so block 0 ends most recently used. Keys dropped since are skipped."""
        touch = self._touch
        entries = self._entries
        move = entries.move_to_end
        for _ in range(count or len(touch)):
            keys = touch.popleft()
            deque(map(move, filter(entries.__contains__, reversed(keys))), 0)

    @staticmethod
    def _live(s: dict[int, float], now: float) -> int:
        m = 0
        for b, exp in s.items():
            if exp > now:
                m |= b
        return m

    # ---- introspection ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def pods(self) -> list[str]:
        return list(self._pod_bit)

    def holdings(self, pod: str) -> set[tuple[int, str]]:
        """(our key, tier) pairs `pod` holds from real events. For tests and debugging."""
        b = self._pod_bit.get(pod)
        if b is None:
            return set()
        out = set()
        for k in self._pod_keys[b]:
            tm = self._tiers.get(k)
            if tm is None:
                out.add((k, GPU))
            else:
                for t, x in enumerate(tm):
                    if x & b:
                        out.add((k, self._tier_names[t]))
        return out

    def stats(self) -> dict:
        return {
            "entries": len(self._entries),
            "engine_keys": len(self._emap),
            "ghost_engine_keys": len(self._ghost),
            "speculative": sum(len(s) for s in self._spec.values()),
            "speculative_keys": len(self._spec),
            "tiered_entries": len(self._tiers),
            "holdings": sum(len(s) for s in self._pod_keys.values()),
            "pods": len(self._pod_bit),
            "unplaceable": self.unplaceable,
            "mismatches": self.mismatches,
            "malformed": self.malformed,
            "evictions": self.evictions,
        }
