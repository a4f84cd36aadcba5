"""Precise prefix index: which pod holds which KV block, per tier, as the pods' own KV events tell.

Fed decoded vLLM KV events (BlockStored / BlockRemoved / AllBlocksCleared) and asked on the request
path "how many leading blocks of this prompt does each pod hold". Pure Python, no I/O, no asyncio.

Keys. We never look requests up by the engine's block hashes: those depend on the engine's hash
algorithm, its seed (PYTHONHASHSEED / NONE_HASH) and extra keys we cannot reproduce. Instead each full
block of `block_size` tokens gets OUR key: xxhash64 of its token ids (little-endian uint32) seeded by
the previous block's key, the first block seeded by a hash of `hash_seed`, the model and the LoRA
adapter. BlockStored carries the tokens, so every engine key it announces is mapped to our key
computed from the parent's our-key; BlockRemoved is then applied through that mapping. Two pods
(or engines with different seeds) storing the same content therefore land on the same our-key.

The engine-key map is keyed by the engine key XOR the (model, LoRA) root, because engines running
different models with the same hash seed give the same engine key to the same tokens. A BlockRemoved
does not name the model, so a removal tries each root the pod stored under (one or a handful).

Data structures (all plain dicts / sets / ints, so the hot operations run in C):
  entries  OrderedDict  our key -> pod bitmask (any tier); LRU order, the oldest first
  tiers    dict         our key -> [pod bitmask per tier index], only for keys some pod holds in a tier
                        other than GPU; a key absent here is held in GPU by exactly the pods of its mask
  emap     dict         engine key ^ root -> our key, for as long as some pod holds the our key
  rev      dict         our key -> engine key ^ root (an int, or a tuple when engines disagree)
  ghost    OrderedDict  bounded memory of mappings whose block nobody holds any more, so that a late
                        BlockStored naming a just-removed parent can still be placed
  pod_keys dict         pod bit -> set of our keys the pod holds (clear_pod and eviction bookkeeping)
  spec     dict         our key -> {pod bit: expiry}; a FIFO of (expiry, key, bit) purges them lazily
Each pod gets one bit of a Python int (bits of pods that leave are reused once they are scrubbed), so
matching 64 pods is an AND per block: walk the keys once, keep the mask of pods still matching, stop
when it is empty. Only blocks held in a non-GPU tier (or speculatively) take a slower weighting path.
"""
from __future__ import annotations

import array
import struct
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import xxhash

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


def _engine_key(h) -> int:
    """vLLM hashes are uint64 ints, or bytes (sha256-based): the last 8 bytes big-endian."""
    if type(h) is int:
        return h
    if isinstance(h, (bytes, bytearray, memoryview)):
        return int.from_bytes(bytes(h)[-8:], "big")
    return int(h)


def _bits(mask: int):
    while mask:
        low = mask & -mask
        yield low
        mask ^= low


class MatchResult(NamedTuple):
    blocks: int        # consecutive blocks from block 0 the pod holds (any tier, or speculatively)
    weighted: float    # sum over those blocks of the best tier weight the pod holds each in


class PreciseIndex:
    GHOST_MAPPINGS = 65_536          # engine-key mappings remembered after their block is gone
    MAX_SPECULATIVE = 1_000_000      # (pod, key) speculative entries at most (oldest dropped first)

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
        weights = {GPU: 1.0, "CPU": 0.8} if tier_weights is None else {str(k).upper(): float(v)
                                                                       for k, v in tier_weights.items()}
        self._configured = weights
        self._unknown_weight = min(weights.values()) if weights else 1.0
        self._w_gpu = weights.get(GPU, 1.0)
        self._tier_names: list[str] = []
        self._weights: list[float] = []
        self._tier_idx: dict[str | None, int] = {}     # medium as reported (or None) -> tier index
        self._order: list[tuple[int, float]] = []      # (tier, weight - GPU weight), best weight first
        self._tier(GPU)
        for name in weights:
            self._tier(name)
        self._tier_idx[None] = 0

        self._entries: OrderedDict[int, int] = OrderedDict()
        self._tiers: dict[int, list[int]] = {}
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
        self._spec_q: deque[tuple[float, int, int]] = deque()
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
        step = self.block_size * 4
        data = _token_bytes(token_ids if len(token_ids) == n * self.block_size else token_ids[:n * self.block_size])
        out = []
        append = out.append
        h = parent
        for off in range(0, n * step, step):
            h = _xxh64(data[off:off + step], h)
            append(h)
        return out

    def request_keys(self, token_ids: Sequence[int], model: str = "", lora: str | None = None,
                     max_blocks: int = 0) -> list[int]:
        """Our chained keys of the prompt's full blocks (a trailing partial block has none)."""
        n = len(token_ids) // self.block_size
        if max_blocks > 0 and n > max_blocks:
            n = max_blocks
        if n <= 0:
            return []
        return self._chain(self._root(model, lora), token_ids, n)

    # ---- tiers and pods -----------------------------------------------------------------------------
    def _tier(self, medium: str | None) -> int:
        t = self._tier_idx.get(medium)
        if t is not None:
            return t
        name = GPU if medium is None else str(medium).upper()
        if name in self._tier_names:
            t = self._tier_names.index(name)
        else:
            t = len(self._tier_names)
            self._tier_names.append(name)
            self._weights.append(self._configured.get(name, self._unknown_weight) if name != GPU else self._w_gpu)
            order = sorted(range(len(self._weights)), key=lambda i: (-self._weights[i], i))
            self._order = [(i, self._weights[i] - self._w_gpu) for i in order]
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
        """BlockStored: `pod` now holds, in tier `medium`, the consecutive full blocks whose tokens are
        `token_ids`, chained after the block the engine calls `parent_engine_hash` (None: block 0)."""
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
        if parent_engine_hash is None:
            parent = root
        else:
            pe = _engine_key(parent_engine_hash) ^ root
            parent = self._emap.get(pe)
            if parent is None:
                parent = self._ghost.get(pe)
                if parent is None:
                    self.unplaceable += 1
                    return
        keys = self._chain(parent, token_ids, n)
        t = self._tier(medium)
        b = self._bit(pod)
        roots = self._pod_roots[b]
        if root not in roots:
            roots.append(root)
        entries, tiers, emap, rev = self._entries, self._tiers, self._emap, self._rev
        held = self._pod_keys[b]
        spec = self._spec
        ntiers = len(self._weights)
        for i in range(n - 1, -1, -1):      # deepest first: block 0 of the run ends most recently used
            k = keys[i]
            e = engine_hashes[i]
            e = (e if type(e) is int else _engine_key(e)) ^ root
            m = entries.get(k)
            if m is None:
                if t == 0:
                    entries[k] = b
                else:
                    entries[k] = b
                    tm = [0] * ntiers
                    tm[t] = b
                    tiers[k] = tm
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
                        entries[k] = m | b
                        held.add(k)
                cur = emap.get(e)
                if cur != k:
                    self._map(e, k, cur)
            if spec:
                s = spec.get(k)
                if s is not None and b in s:    # a real event confirms (or replaces) the guess
                    del s[b]
                    if not s:
                        del spec[k]
        if parent_engine_hash is not None and parent in entries:
            entries.move_to_end(parent)
        excess = len(entries) - self.max_keys
        while excess > 0:
            self._evict_oldest()
            excess -= 1

    def _map(self, e: int, k: int, cur: int | None) -> None:
        """Point engine key `e` at our key `k` (it pointed at `cur`, or nowhere)."""
        rev = self._rev
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

    def _drop(self, k: int) -> None:
        """Forget our key `k` entirely (no pod holds it, or it is evicted): entry, tiers, mappings."""
        del self._entries[k]
        self._tiers.pop(k, None)
        r = self._rev.pop(k, None)
        if r is None:
            return
        emap, ghost = self._emap, self._ghost
        for e in (r,) if type(r) is int else r:
            if emap.get(e) == k:
                del emap[e]
                ghost[e] = k
                ghost.move_to_end(e)
        excess = len(ghost) - self.GHOST_MAPPINGS
        while excess > 0:
            ghost.popitem(last=False)
            excess -= 1

    def _evict_oldest(self) -> None:
        k, m = next(iter(self._entries.items()))
        pod_keys = self._pod_keys
        for b in _bits(m):
            pod_keys[b].discard(k)
        self._drop(k)
        self.evictions += 1

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
            if nm and not any(tm[1:]):
                del self._tiers[k]          # GPU only again: the mask says it all
        if not nm & b:
            self._pod_keys[b].discard(k)
        if nm:
            entries[k] = nm                 # an update, not a touch: LRU order unchanged
        else:
            self._drop(k)

    def apply_removed(self, pod: str, engine_hashes: Sequence[int], medium: str | None) -> None:
        """BlockRemoved: `pod` no longer holds these blocks in tier `medium` (other tiers and pods keep theirs)."""
        b = self._pod_bit.get(pod)
        if b is None:
            return
        t = self._tier(medium)
        roots = self._pod_roots[b]
        emap = self._emap
        if len(roots) == 1:
            r0 = roots[0]
            for e in engine_hashes:
                k = emap.get((e if type(e) is int else _engine_key(e)) ^ r0)
                if k is not None:
                    self._unhold(b, k, t)
            return
        for e in engine_hashes:
            e = e if type(e) is int else _engine_key(e)
            for r in roots:
                k = emap.get(e ^ r)
                if k is not None:
                    self._unhold(b, k, t)

    def clear_pod(self, pod: str) -> None:
        """AllBlocksCleared, a sequence gap without replay, or the pod left the pool: drop all it holds
        (speculative entries included) and free its bit."""
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
                if nm and not any(tm[1:]):
                    del tiers[k]
            if nm:
                entries[k] = nm
            else:
                self._drop(k)
        spec = self._spec
        for k in [k for k, s in spec.items() if b in s]:
            s = spec[k]
            del s[b]
            if not s:
                del spec[k]
        del self._pod_roots[b]
        del self._bit_pod[b]
        self._free_bits.append(b)

    # ---- speculative entries ------------------------------------------------------------------------------
    def _purge(self, now: float) -> None:
        q = self._spec_q
        spec = self._spec
        while q and q[0][0] <= now:
            exp, k, b = q.popleft()
            s = spec.get(k)
            if s is not None and s.get(b) == exp:
                del s[b]
                if not s:
                    del spec[k]

    def add_speculative(self, pod: str, keys: Sequence[int], now: float) -> None:
        """At routing time: `pod` will soon hold `keys`; they count (as GPU) in match() until
        now + speculative_ttl, or until a real event for that pod and key arrives."""
        self._purge(now)
        if not keys or self.speculative_ttl <= 0:
            return
        b = self._bit(pod)
        exp = now + self.speculative_ttl
        spec, q = self._spec, self._spec_q
        get, tiers = self._entries.get, self._tiers
        for k in keys:
            if get(k, 0) & b:
                tm = tiers.get(k)
                if tm is None or tm[0] & b:
                    continue            # already held in GPU: nothing to guess
            s = spec.get(k)
            if s is None:
                spec[k] = {b: exp}
            else:
                s[b] = exp
            q.append((exp, k, b))
        excess = len(q) - self.MAX_SPECULATIVE
        while excess > 0:
            exp, k, b = q.popleft()
            s = spec.get(k)
            if s is not None and s.get(b) == exp:
                del s[b]
                if not s:
                    del spec[k]
            excess -= 1

    # ---- matching ---------------------------------------------------------------------------------------
    def match(self, keys: Sequence[int], pods: Iterable[str] | None = None,
              now: float | None = None) -> dict[str, MatchResult]:
        """Per pod: the run of blocks from block 0 it holds (any tier, or a live speculative entry), and
        that run weighted by the best tier each block is held in. With `pods`, every one of them is in
        the answer (zeros for misses); without, only pods holding block 0."""
        if pods is not None:
            pods = list(pods)
            pb = self._pod_bit
            filt = 0
            for p in pods:
                filt |= pb.get(p, 0)
        else:
            filt = -1
        out: dict[str, MatchResult] = {}
        if pods is not None:
            zero = MatchResult(0, 0.0)
            for p in pods:
                out[p] = zero
        n = len(keys)
        if not n or not filt:
            return out
        spec = self._spec
        if spec:
            if now is None:
                now = time.monotonic()
            self._purge(now)
        entries = self._entries
        get = entries.get
        tiers = self._tiers
        k = keys[0]
        alive = get(k, 0)
        if spec:
            s = spec.get(k)
            if s is not None:
                for bb, exp in s.items():
                    if exp > now:
                        alive |= bb
        alive &= filt
        if not alive:
            return out
        ends: dict[int, int] = {}          # pod bit -> blocks matched, for pods that stopped
        acc: dict[int, float] = {}         # pod bit -> sum of (tier weight - GPU weight)
        order = self._order
        for i, k in enumerate(keys):       # key 0 again: cheap, keeps one loop body
            m = get(k, 0)
            sm = 0
            if spec:
                s = spec.get(k)
                if s is not None:
                    for bb, exp in s.items():
                        if exp > now:
                            sm |= bb
                    m |= sm
            nm = alive & m
            if nm != alive:
                gone = alive ^ nm
                while gone:
                    low = gone & -gone
                    ends[low] = i
                    gone ^= low
                alive = nm
                if not alive:
                    break
            if tiers:
                tm = tiers.get(k)
                if tm is not None:
                    rest = alive
                    ntm = len(tm)
                    for t, d in order:      # best tier first: each pod weighs its best tier
                        if t >= ntm:
                            continue
                        hit = rest & (tm[t] | sm if t == 0 else tm[t])
                        if hit:
                            rest ^= hit
                            if d:
                                while hit:
                                    low = hit & -hit
                                    acc[low] = acc.get(low, 0.0) + d
                                    hit ^= low
                            if not rest:
                                break
        for low in _bits(alive):
            ends[low] = n
        depth = 0
        w = self._w_gpu
        names = self._bit_pod
        for low, blocks in ends.items():
            if blocks:
                out[names[low]] = MatchResult(blocks, blocks * w + acc.get(low, 0.0))
                if blocks > depth:
                    depth = blocks
        if depth:       # touch deepest first, so block 0 ends most recently used
            move = entries.move_to_end
            for k in reversed(keys[:depth]):
                if k in entries:
                    move(k)
        return out

    # ---- introspection ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def pods(self) -> list[str]:
        return list(self._pod_bit)

    def holdings(self, pod: str) -> set[tuple[int, str]]:
        """(our key, tier) pairs `pod` holds (real events only). For tests and debugging."""
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
