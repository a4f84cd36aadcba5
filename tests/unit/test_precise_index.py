"""PreciseIndex: our chained keys, KV-event bookkeeping per pod and tier, matching, speculation, the LRU
bound; a property test against a naive model, and an equivalence test against the simulated vLLM."""
from __future__ import annotations

import hashlib
import random
import struct

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings, strategies as st

from epp.kvcache.precise_index import MatchResult, PreciseIndex
from vllm_sim import profiles
from vllm_sim.engine import Cleared, Engine, EngineConfig, Removed, Request, Stored
from vllm_sim.engine.kv_cache import block_key

BS = 4


# ---- helpers ----------------------------------------------------------------------------------------
def ref_keys(tokens, bs=BS, seed="", model="", lora=None):
    """Independent restatement of the key scheme: xxh64 over LE uint32 token ids, seeded by the parent."""
    h = xxhash.xxh64_intdigest(f"{seed}\x00{model}\x00{lora or ''}".encode())
    out = []
    for i in range(len(tokens) // bs):
        h = xxhash.xxh64_intdigest(struct.pack(f"<{bs}I", *tokens[i * bs:(i + 1) * bs]), h)
        out.append(h)
    return out


class FakeEngine:
    """Engine block hashes for a token sequence: the sim's xxh3 (with a seed) or a sha256 chain
    reported as bytes, as vLLM's sha256 hashing does."""

    def __init__(self, seed=0, algo="xxh3", bs=BS):
        self.seed, self.algo, self.bs = seed, algo, bs

    def hashes(self, tokens):
        out, parent = [], None
        for i in range(len(tokens) // self.bs):
            blk = tokens[i * self.bs:(i + 1) * self.bs]
            if self.algo == "xxh3":
                parent = block_key(parent, blk, 0, self.seed)
            else:
                prev = parent or str(self.seed).encode()
                parent = hashlib.sha256(prev + struct.pack(f"<{len(blk)}I", *blk)).digest()
            out.append(parent)
        return out


def store(ix, pod, eng, tokens, start, stop, medium="GPU", model="", lora=None):
    """BlockStored for blocks [start, stop) of `tokens` as engine `eng` would announce it."""
    hs = eng.hashes(tokens[:stop * eng.bs])
    parent = hs[start - 1] if start else None
    ix.apply_stored(pod, hs[start:stop], parent, tokens[start * eng.bs:stop * eng.bs], eng.bs, medium, model, lora)


def remove(ix, pod, eng, tokens, blocks, medium="GPU"):
    hs = eng.hashes(tokens[:(max(blocks) + 1) * eng.bs])
    ix.apply_removed(pod, [hs[b] for b in blocks], medium)


def check_invariants(ix: PreciseIndex) -> None:
    """Internal consistency: masks, tiers, per-pod key sets and engine-key maps agree; nothing leaks."""
    entries, tiers = ix._entries, ix._tiers
    assert len(entries) <= ix.max_keys
    assert all(m > 0 for m in entries.values()), "an entry nobody holds"
    for k, tm in tiers.items():
        assert k in entries
        acc = 0
        for x in tm:
            acc |= x
        assert acc == entries[k]
        assert any(tm[1:]), "tiers kept for a GPU-only key"
    assert ix._lossy == {k: entries[k] & ~tm[0] for k, tm in tiers.items() if tm[0] != entries[k]}
    live_bits = set(ix._bit_pod)
    assert set(ix._pod_bit.values()) == live_bits == set(ix._pod_keys) == set(ix._pod_roots)
    all_bits = 0
    for b in live_bits:
        all_bits |= b
    for b, keys in ix._pod_keys.items():
        for k in keys:
            assert entries[k] & b
    for k, m in entries.items():
        assert m & ~all_bits == 0, "a stale pod bit"
        for b in live_bits:
            if m & b:
                assert k in ix._pod_keys[b]
    for e, k in ix._emap.items():
        assert k in entries, "an engine-key mapping to a block nobody holds"
        r = ix._rev[k]
        assert e == r or (type(r) is tuple and e in r)
    assert set(ix._rev) <= set(entries)
    assert len(ix._ghost) <= ix.GHOST_MAPPINGS
    for k, s in ix._spec.items():
        assert s and all(b in live_bits for b in s)
    assert ix._spec_mask == {k: sum(s) for k, s in ix._spec.items()}


def blocks(res, pod):
    return res.get(pod, MatchResult(0, 0.0)).blocks


TOK = list(range(100, 100 + 10 * BS))          # 10 blocks


# ---- request keys ---------------------------------------------------------------------------------------
def test_request_keys_deterministic_and_chained():
    ix = PreciseIndex(block_size=BS)
    k = ix.request_keys(TOK)
    assert k == PreciseIndex(block_size=BS).request_keys(list(TOK)) == ref_keys(TOK)
    assert len(k) == 10 and len(set(k)) == 10
    # a change in block 2 changes keys 2.. and leaves 0, 1 alone; a change in block 0 changes all
    t2 = list(TOK)
    t2[2 * BS + 1] += 1
    k2 = ix.request_keys(t2)
    assert k2[:2] == k[:2] and all(a != b for a, b in zip(k2[2:], k[2:]))
    t0 = list(TOK)
    t0[0] += 1
    assert all(a != b for a, b in zip(ix.request_keys(t0), k))
    # the same block content at another position (other parent) gets another key
    rep = TOK[:BS] * 3
    kr = ix.request_keys(rep)
    assert len(set(kr)) == 3
    assert ix.request_keys(tuple(TOK)) == k


def test_request_keys_seed_model_lora_separation():
    base = PreciseIndex(block_size=BS).request_keys(TOK, model="m")
    assert PreciseIndex(block_size=BS, hash_seed="s").request_keys(TOK, model="m")[0] != base[0]
    ix = PreciseIndex(block_size=BS)
    assert ix.request_keys(TOK, model="m2")[0] != base[0]
    assert ix.request_keys(TOK, model="m", lora="a")[0] != base[0]
    assert ix.request_keys(TOK, model="m", lora="a")[0] != ix.request_keys(TOK, model="m", lora="b")[0]
    assert ix.request_keys(TOK, model="m", lora=None) == ix.request_keys(TOK, model="m", lora="") == base
    # no ambiguity between where the model name ends and the adapter begins
    assert ix.request_keys(TOK, model="ab", lora="c")[0] != ix.request_keys(TOK, model="a", lora="bc")[0]
    assert base == ref_keys(TOK, model="m")


def test_request_keys_partial_block_and_max_blocks():
    ix = PreciseIndex(block_size=BS)
    full = ix.request_keys(TOK)
    assert ix.request_keys(TOK + [1, 2, 3]) == full            # trailing partial block has no key
    assert ix.request_keys(TOK[:BS - 1]) == [] and ix.request_keys([]) == []
    assert ix.request_keys(TOK, max_blocks=3) == full[:3]
    assert ix.request_keys(TOK, max_blocks=0) == full
    assert ix.request_keys(TOK, max_blocks=100) == full
    with pytest.raises((OverflowError, ValueError)):
        ix.request_keys([-1] * BS)


# ---- stored / removed / cleared / tiers --------------------------------------------------------------------
def test_store_match_and_tier_weights():
    ix = PreciseIndex(block_size=BS)
    e = FakeEngine()
    keys = ix.request_keys(TOK)
    store(ix, "a", e, TOK, 0, 4)                      # GPU blocks 0..3
    store(ix, "a", e, TOK, 0, 6, medium="CPU")        # CPU copies of blocks 0..5
    r = ix.match(keys)
    assert r["a"].blocks == 6
    assert r["a"].weighted == pytest.approx(4 * 1.0 + 2 * 0.8)   # GPU+CPU weighs 1.0, CPU only 0.8
    remove(ix, "a", e, TOK, [0], "GPU")               # block 0 only in CPU now
    r = ix.match(keys)
    assert r["a"] == (6, pytest.approx(3 * 1.0 + 3 * 0.8))
    remove(ix, "a", e, TOK, [0], "CPU")               # gone from every tier: the run breaks at 0
    assert ix.match(keys) == {}
    assert ix.match(keys[1:])["a"].blocks == 5        # (the rest is still held)
    check_invariants(ix)


def test_medium_none_is_gpu_and_custom_weights():
    ix = PreciseIndex(block_size=BS, tier_weights={"GPU": 1.0, "CPU": 0.5, "DISK": 0.25})
    e = FakeEngine()
    keys = ix.request_keys(TOK)
    store(ix, "a", e, TOK, 0, 1, medium=None)
    store(ix, "a", e, TOK, 1, 2, medium="cpu")        # tier names are case-insensitive
    store(ix, "a", e, TOK, 2, 3, medium="DISK")
    store(ix, "a", e, TOK, 3, 4, medium="NVME")       # unknown tier: the lowest configured weight
    assert ix.match(keys)["a"] == (4, pytest.approx(1.0 + 0.5 + 0.25 + 0.25))
    assert ix.holdings("a") == {(keys[0], "GPU"), (keys[1], "CPU"), (keys[2], "DISK"), (keys[3], "NVME")}
    check_invariants(ix)


def test_gpu_not_the_best_tier():
    ix = PreciseIndex(block_size=BS, tier_weights={"GPU": 0.5, "CPU": 1.0})
    e = FakeEngine()
    keys = ix.request_keys(TOK)
    store(ix, "a", e, TOK, 0, 2)
    store(ix, "a", e, TOK, 1, 3, medium="CPU")
    ix.add_speculative("b", keys[:2], now=0.0)         # speculative entries weigh as GPU
    r = ix.match(keys, now=1.0)
    assert r["a"] == (3, pytest.approx(0.5 + 1.0 + 1.0)) and r["b"] == (2, 1.0)


def test_pending_lru_touches_are_bounded():
    ix = PreciseIndex(block_size=BS)
    store(ix, "a", FakeEngine(), TOK, 0, 10)
    keys = ix.request_keys(TOK)
    for _ in range(100):
        assert ix.match(keys)["a"].blocks == 10
    assert len(ix._touch) <= 33
    ix.apply_removed("a", [], "GPU")                   # any event applies them first
    assert not ix._touch


def test_remove_in_one_tier_or_pod_leaves_others():
    ix = PreciseIndex(block_size=BS)
    e = FakeEngine()
    keys = ix.request_keys(TOK)
    for pod in ("a", "b"):
        store(ix, pod, e, TOK, 0, 5)
    store(ix, "a", e, TOK, 0, 5, medium="CPU")
    assert len(ix) == 5
    remove(ix, "a", e, TOK, [2], "GPU")
    r = ix.match(keys)
    assert r["a"] == (5, pytest.approx(4.8)) and r["b"] == (5, 5.0)
    remove(ix, "b", e, TOK, [2], "GPU")
    r = ix.match(keys)
    assert r["a"].blocks == 5 and r["b"].blocks == 2
    remove(ix, "b", e, TOK, [3], "CPU")                # b never held it in CPU: no effect
    remove(ix, "zzz", e, TOK, [3], "GPU")              # unknown pod: no effect
    assert ix.match(keys)["a"].blocks == 5
    ix.clear_pod("a")
    assert ix.match(keys) == {"b": MatchResult(2, 2.0)}
    assert ix.holdings("a") == set()
    check_invariants(ix)


def test_consecutive_from_block_zero():
    ix = PreciseIndex(block_size=BS)
    e = FakeEngine()
    keys = ix.request_keys(TOK)
    store(ix, "a", e, TOK, 0, 4)
    remove(ix, "a", e, TOK, [2])                       # a holds 0, 1, 3
    assert ix.match(keys)["a"] == (2, 2.0)
    store(ix, "b", e, TOK, 0, 4)
    remove(ix, "b", e, TOK, [0])                       # b holds 1, 2, 3 but not block 0
    r = ix.match(keys)
    assert "b" not in r and r["a"].blocks == 2
    # an explicit pod list answers every pod, zeros for misses and unknown pods
    r = ix.match(keys, pods=["a", "b", "nobody"])
    assert r == {"a": MatchResult(2, 2.0), "b": MatchResult(0, 0.0), "nobody": MatchResult(0, 0.0)}
    assert ix.match(keys, pods=["b"]) == {"b": MatchResult(0, 0.0)}
    assert ix.match([], pods=["a"]) == {"a": MatchResult(0, 0.0)} and ix.match([]) == {}


def test_clear_pod_frees_everything_and_reuses_its_bit():
    ix = PreciseIndex(block_size=BS)
    e = FakeEngine()
    keys = ix.request_keys(TOK)
    store(ix, "a", e, TOK, 0, 10)
    store(ix, "a", e, TOK, 0, 10, medium="CPU")
    ix.add_speculative("a", ix.request_keys(TOK[:BS] + [9] * BS), now=0.0)
    ix.clear_pod("a")
    s = ix.stats()
    assert len(ix) == 0 and s["engine_keys"] == 0 and s["speculative"] == 0 and s["pods"] == 0
    assert not ix._rev and not ix._tiers and not ix._pod_keys
    store(ix, "b", e, TOK, 0, 3)                       # takes a's bit: nothing of a's shows up
    assert ix.match(keys, now=0.0) == {"b": MatchResult(3, 3.0)}
    ix.clear_pod("never-seen")
    check_invariants(ix)


def test_same_content_same_key_whatever_the_engine_hash():
    """Engines with other seeds or hash algorithms (sha256, bytes) announce other engine keys for the
    same tokens; every pod lands on the same our-keys, and removals go through each engine's own keys."""
    ix = PreciseIndex(block_size=BS)
    engines = {"a": FakeEngine(0), "b": FakeEngine(12345), "c": FakeEngine(7, algo="sha256")}
    keys = ix.request_keys(TOK, model="m")
    for pod, e in engines.items():
        store(ix, pod, e, TOK, 0, 3, model="m")
        store(ix, pod, e, TOK, 3, 6, model="m")        # chained on the pod's own parent engine key
    assert len(ix) == 6
    assert ix.stats()["engine_keys"] == 18
    for pod in engines:
        assert ix.holdings(pod) == {(k, "GPU") for k in keys[:6]}
    r = ix.match(keys)
    assert {p: m.blocks for p, m in r.items()} == {"a": 6, "b": 6, "c": 6}
    remove(ix, "c", engines["c"], TOK, [1])
    ix.apply_removed("b", [0x1234567], "GPU")          # an engine key nobody announced: no effect
    r = ix.match(keys)
    assert {p: m.blocks for p, m in r.items()} == {"a": 6, "b": 6, "c": 1}
    check_invariants(ix)


def test_parent_stored_by_another_pod():
    ix = PreciseIndex(block_size=BS)
    e = FakeEngine()
    keys = ix.request_keys(TOK)
    store(ix, "a", e, TOK, 0, 3)
    store(ix, "b", e, TOK, 3, 5)                       # b's parent engine key is known through a
    r = ix.match(keys)
    assert r["a"].blocks == 3 and "b" not in r
    assert ix.holdings("b") == {(keys[3], "GPU"), (keys[4], "GPU")}
    store(ix, "b", e, TOK, 0, 3)
    assert ix.match(keys)["b"].blocks == 5
    assert ix.stats()["unplaceable"] == 0


def test_models_sharing_engine_keys_stay_apart():
    """Two models served with the same hash seed give the same engine keys to the same tokens."""
    ix = PreciseIndex(block_size=BS)
    e = FakeEngine(0)
    store(ix, "a", e, TOK, 0, 4, model="m1")
    store(ix, "b", e, TOK, 0, 4, model="m2")
    store(ix, "b", e, TOK, 4, 6, model="m2")           # parent resolves within m2, not m1
    k1, k2 = ix.request_keys(TOK, model="m1"), ix.request_keys(TOK, model="m2")
    assert {p: m.blocks for p, m in ix.match(k1).items()} == {"a": 4}
    assert {p: m.blocks for p, m in ix.match(k2).items()} == {"b": 6}
    remove(ix, "a", e, TOK, [0])
    assert ix.match(k1) == {} and ix.match(k2)["b"].blocks == 6
    # a pod serving a base model and an adapter: removals find the right one
    store(ix, "c", e, TOK, 0, 2, model="m1")
    store(ix, "c", FakeEngine(5), TOK, 0, 2, model="m1", lora="ad")
    remove(ix, "c", FakeEngine(5), TOK, [1])
    assert ix.match(ix.request_keys(TOK, model="m1", lora="ad"))["c"].blocks == 1
    assert ix.match(k1)["c"].blocks == 2
    check_invariants(ix)


def test_unplaceable_and_block_size_mismatch_are_counted_not_guessed():
    ix = PreciseIndex(block_size=BS)
    e = FakeEngine()
    store(ix, "a", e, TOK, 3, 5)                       # parent never seen
    assert len(ix) == 0 and ix.stats()["unplaceable"] == 1 and ix.stats()["engine_keys"] == 0
    ix.apply_stored("a", [1, 2], None, TOK[:16], 8, "GPU")    # the engine's block size differs
    assert len(ix) == 0 and ix.stats()["mismatches"] == 1
    ix.apply_stored("a", [1, 2], None, TOK[:5], BS, "GPU")    # tokens do not fill the blocks
    assert len(ix) == 0 and ix.stats()["malformed"] == 1
    ix.apply_stored("a", [], None, [], BS, "GPU")
    assert len(ix) == 0 and ix.pods() == []
    # a parent removed just before its child is announced is still placed (recent mappings are kept)
    store(ix, "a", e, TOK, 0, 2)
    remove(ix, "a", e, TOK, [0, 1])
    assert len(ix) == 0 and ix.stats()["engine_keys"] == 0 and ix.stats()["ghost_engine_keys"] == 2
    store(ix, "a", e, TOK, 2, 3)
    assert ix.holdings("a") == {(ix.request_keys(TOK)[2], "GPU")}
    assert ix.stats()["unplaceable"] == 1
    check_invariants(ix)


def test_malformed_events_are_counted_and_change_nothing():
    ix = PreciseIndex(block_size=BS)
    store(ix, "a", FakeEngine(), TOK, 0, 2)
    before = (dict(ix._entries), dict(ix._emap), ix.holdings("a"))
    ix.apply_stored("a", [None], None, TOK[:BS], BS, "GPU")            # not a hash
    ix.apply_stored("a", [1], None, [2 ** 32] + TOK[1:BS], BS, "GPU")  # not a uint32 token id
    ix.apply_stored("a", [1], None, [-1] * BS, BS, "GPU")
    ix.apply_stored("a", [1], "x", TOK[:BS], BS, "GPU")               # not a parent hash
    ix.apply_removed("a", [None], "GPU")
    assert ix.stats()["malformed"] == 5
    assert (dict(ix._entries), dict(ix._emap), ix.holdings("a")) == before
    check_invariants(ix)


def test_restore_is_idempotent_and_engine_key_remap():
    ix = PreciseIndex(block_size=BS)
    e = FakeEngine()
    for _ in range(3):
        store(ix, "a", e, TOK, 0, 4)
    assert len(ix) == 4 and ix.stats()["holdings"] == 4 and ix.stats()["engine_keys"] == 4
    # an engine key announced again with other content: the newest content wins, the old key's
    # mapping is dropped so a later removal cannot hit the wrong block
    h = e.hashes(TOK[:BS])[0]
    other = [7] * BS
    ix.apply_stored("a", [h], None, other, BS, "GPU")
    ko = ix.request_keys(other)[0]
    assert ix._emap[h ^ ix._root("", None)] == ko
    ix.apply_removed("a", [h], "GPU")
    assert ix.match([ko]) == {} and ix.match(ix.request_keys(TOK))["a"].blocks == 4
    check_invariants(ix)


def test_engine_hashes_as_bytes():
    ix = PreciseIndex(block_size=BS)
    hs = [hashlib.sha256(bytes([i])).digest() for i in range(3)]
    ix.apply_stored("a", hs[:2], None, TOK[:2 * BS], BS, "GPU")
    ix.apply_stored("a", hs[2:], hs[1], TOK[2 * BS:3 * BS], BS, "GPU")
    keys = ix.request_keys(TOK)
    assert ix.match(keys)["a"].blocks == 3
    ix.apply_removed("a", [hs[1]], "GPU")
    assert ix.match(keys)["a"].blocks == 1
    ix.apply_removed("a", [int.from_bytes(hs[0][-8:], "big")], "GPU")   # the same key as an int
    assert ix.match(keys) == {}


# ---- speculative entries -------------------------------------------------------------------------------------
def test_speculative_entries_count_until_ttl():
    ix = PreciseIndex(block_size=BS, speculative_ttl=2.0)
    e = FakeEngine()
    keys = ix.request_keys(TOK)
    store(ix, "a", e, TOK, 0, 2)
    ix.add_speculative("b", keys[:5], now=10.0)
    ix.add_speculative("a", keys[:5], now=10.0)        # a already holds 0, 1 in GPU: only 2..4 are guesses
    assert ix.stats()["speculative"] == 8
    r = ix.match(keys, now=11.0)
    assert r["a"] == (5, 5.0) and r["b"] == (5, 5.0)
    assert ix.match(keys, now=11.999)["b"].blocks == 5
    r = ix.match(keys, now=12.0)                       # expired at now + ttl
    assert "b" not in r and r["a"].blocks == 2
    assert ix.stats()["speculative"] == 0 and not ix._spec and not ix._spec_q   # purged lazily
    assert len(ix) == 2                                 # speculation never makes entries


def test_speculative_confirmed_by_real_store_and_counts_as_gpu():
    ix = PreciseIndex(block_size=BS, speculative_ttl=2.0)
    e = FakeEngine()
    keys = ix.request_keys(TOK)
    store(ix, "a", e, TOK, 0, 3, medium="CPU")
    ix.add_speculative("a", keys[:4], now=0.0)          # routed there: the CPU blocks will be loaded to GPU
    assert ix.match(keys, now=1.0)["a"] == (4, 4.0)
    store(ix, "a", e, TOK, 0, 4)                       # the real events arrive
    assert ix.stats()["speculative"] == 0
    assert ix.match(keys, now=1.0)["a"] == (4, 4.0)
    assert ix.match(keys, now=100.0)["a"] == (4, 4.0)   # real entries do not expire
    # a re-routing refreshes the expiry; clear_pod drops the guesses
    ix.add_speculative("b", keys[:2], now=0.0)
    ix.add_speculative("b", keys[:2], now=1.5)
    assert ix.match(keys, now=3.0)["b"].blocks == 2
    assert ix.match(keys, now=3.5).get("b") is None
    ix.add_speculative("c", keys[:2], now=0.0)
    ix.clear_pod("c")
    assert "c" not in ix.match(keys, now=0.5)
    check_invariants(ix)


def test_speculative_with_out_of_order_times():
    """Callers' clocks may step back: expiry is still exact, though purging waits for the queue."""
    ix = PreciseIndex(block_size=BS, speculative_ttl=2.0)
    keys = ix.request_keys(TOK)
    ix.add_speculative("a", keys[:3], now=10.0)
    ix.add_speculative("b", keys[:2], now=0.0)          # expires at 2.0, queued behind a's 12.0
    r = ix.match(keys, now=1.0)
    assert r["a"].blocks == 3 and r["b"].blocks == 2    # a's count until 12.0, b's until 2.0
    r = ix.match(keys, now=5.0)
    assert "b" not in r and r["a"].blocks == 3
    assert ix.match(keys, now=12.5) == {}
    assert ix.stats()["speculative"] == 0 and ix._spec_sorted


def test_speculative_memory_is_bounded():
    ix = PreciseIndex(block_size=BS)
    ix.MAX_SPECULATIVE = 100
    rng = random.Random(1)
    for i in range(50):
        ix.add_speculative(f"p{i % 5}", [rng.getrandbits(64) for _ in range(20)], now=0.0)
    assert len(ix._spec_q) <= 100 and ix.stats()["speculative"] <= 100
    ix.add_speculative("p0", [1], now=1000.0)         # everything older has expired
    assert ix.stats()["speculative"] == 1


# ---- LRU bound ----------------------------------------------------------------------------------------------
def test_lru_bound_evicts_oldest_and_match_touches():
    ix = PreciseIndex(block_size=BS, max_keys=8)
    e = FakeEngine()
    t1, t2, t3 = (list(range(x, x + 6 * BS)) for x in (1000, 2000, 3000))
    k1, k2, k3 = ix.request_keys(t1), ix.request_keys(t2), ix.request_keys(t3)
    store(ix, "a", e, t1, 0, 6)
    store(ix, "b", e, t2, 0, 2)
    assert len(ix) == 8 and ix.stats()["evictions"] == 0
    assert ix.match(k1)["a"].blocks == 6               # touches t1's blocks: t2's are now the oldest
    store(ix, "c", e, t3, 0, 2)
    assert len(ix) == 8 and ix.stats()["evictions"] == 2
    assert ix.match(k1)["a"].blocks == 6 and ix.match(k2) == {}
    assert ix.holdings("b") == set()
    assert ix.match(k3)["c"].blocks == 2               # t3 most recent, then t1 (block 0 before its tail)
    store(ix, "c", e, t3, 2, 4)                        # evicts t1's tail, not its head
    assert ix.match(k1)["a"].blocks == 4 and ix.match(k3)["c"].blocks == 4
    assert ix.stats()["evictions"] == 4 and len(ix) == 8
    check_invariants(ix)
    # the evicted blocks' engine-key mappings went with them
    assert ix.stats()["engine_keys"] == 8


def test_no_leak_under_churn():
    """Heavy random store / remove / clear traffic over many pods and engines, with a tight LRU bound:
    internal maps stay consistent and sized by what is held, and drain to empty."""
    rng = random.Random(7)
    ix = PreciseIndex(block_size=BS, max_keys=500)
    ix.GHOST_MAPPINGS = 64
    engines = {f"p{i}": FakeEngine(i % 3, algo="sha256" if i == 5 else "xxh3") for i in range(8)}
    docs = [[rng.randrange(50_000) for _ in range(rng.randrange(1, 30) * BS)] for _ in range(60)]
    shared = [rng.randrange(50_000) for _ in range(8 * BS)]
    docs += [shared + d for d in docs[:20]]
    held: dict[str, list] = {p: [] for p in engines}
    for step in range(3000):
        pod = rng.choice(list(engines))
        e = engines[pod]
        op = rng.random()
        if op < 0.6:
            d = rng.choice(docs)
            nb = len(d) // BS
            a = rng.randrange(nb)
            b = rng.randrange(a, nb) + 1
            if a:
                store(ix, pod, e, d, 0, a, medium=rng.choice(["GPU", "CPU"]))
            store(ix, pod, e, d, a, b, medium=rng.choice(["GPU", "GPU", "CPU"]))
            held[pod].append(d[:b * BS])
        elif op < 0.95 and held[pod]:
            d = rng.choice(held[pod])
            nb = len(d) // BS
            remove(ix, pod, e, d, rng.sample(range(nb), rng.randrange(1, nb + 1)), rng.choice(["GPU", "CPU"]))
        elif op >= 0.995:
            ix.clear_pod(pod)
            held[pod] = []
        if step % 500 == 0:
            check_invariants(ix)
    check_invariants(ix)
    s = ix.stats()
    assert s["evictions"] > 0 and s["entries"] <= 500
    assert s["engine_keys"] <= 3 * s["entries"] + 1           # at most one mapping per engine flavour
    assert len(ix._rev) <= s["entries"] and s["holdings"] <= 8 * s["entries"]
    for pod in engines:
        ix.clear_pod(pod)
    s = ix.stats()
    assert s["entries"] == s["engine_keys"] == s["holdings"] == s["pods"] == 0
    assert not ix._rev and not ix._tiers and not ix._pod_keys and not ix._pod_roots
    assert len(ix._ghost) <= 64


# ---- property test against a naive model -------------------------------------------------------------------------
PODS = {"p0": ("m", FakeEngine(0)), "p1": ("m", FakeEngine(0)), "p2": ("m", FakeEngine(99)),
        "p3": ("m2", FakeEngine(0))}                                       # p3: another model, p0's engine keys
_common = [11, 12, 13, 14, 15, 16, 17, 18]
UNIVERSE = [_common + list(range(20, 36)), _common + list(range(40, 52)), list(range(60, 84)),
            _common[:4] + list(range(90, 98)), _common + list(range(20, 28)) + [5, 5, 5, 5]]
TIERS = ["GPU", "CPU", "DISK"]
WEIGHTS = {"GPU": 1.0, "CPU": 0.8, "DISK": 0.3}
# match() has a vectorised path for one tier below GPU, and a general one (several tiers, or GPU not best)
WEIGHT_SETS = [WEIGHTS, {"GPU": 1.0, "CPU": 0.8}, {"GPU": 0.5, "CPU": 1.0, "DISK": 0.3}]

ops = st.lists(st.one_of(
    st.tuples(st.just("store"), st.sampled_from(sorted(PODS)), st.integers(0, len(UNIVERSE) - 1),
              st.sampled_from([0, 0, 0, 1, 2, 3, 4, 5, 6]), st.integers(1, 4), st.sampled_from(TIERS)),
    st.tuples(st.just("orphan"), st.sampled_from(sorted(PODS)), st.integers(0, len(UNIVERSE) - 1),
              st.integers(1, 5), st.integers(1, 2), st.sampled_from(TIERS)),
    st.tuples(st.just("remove"), st.sampled_from(sorted(PODS)), st.integers(0, len(UNIVERSE) - 1),
              st.integers(0, 6), st.sampled_from(TIERS)),
    st.tuples(st.just("clear"), st.sampled_from(sorted(PODS))),
    st.tuples(st.just("spec"), st.sampled_from(sorted(PODS)), st.integers(0, len(UNIVERSE) - 1),
              st.integers(1, 6)),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 1.0, 2.5])),
), max_size=60)


class NaiveModel:
    def __init__(self):
        self.held: dict[str, set] = {p: set() for p in PODS}        # pod -> {(our key, tier)}
        self.known: set = set()                                      # (model, engine key) ever placed
        self.emap: dict = {}                                         # (model, engine key) -> our key
        self.spec: dict = {}                                         # (pod, our key) -> expiry
        self.unplaceable = 0

    def store(self, pod, tokens, start, stop, tier, orphan=False):
        model, eng = PODS[pod]
        ek = [h if type(h) is int else int.from_bytes(h[-8:], "big") for h in eng.hashes(tokens[:stop * BS])]
        ok = ref_keys(tokens[:stop * BS], model=model)
        if orphan or (start and (model, ek[start - 1]) not in self.known):
            self.unplaceable += 1
            return
        for i in range(start, stop):
            self.known.add((model, ek[i]))
            self.emap[(model, ek[i])] = ok[i]
            self.held[pod].add((ok[i], tier))
            self.spec.pop((pod, ok[i]), None)

    def remove(self, pod, h, tier):
        model, _ = PODS[pod]
        k = self.emap.get((model, h))
        if k is not None:
            self.held[pod].discard((k, tier))

    def add_spec(self, pod, keys, now):
        for k in keys:
            if (k, "GPU") not in self.held[pod]:
                self.spec[(pod, k)] = now + 2.0

    def match(self, keys, now, weights=WEIGHTS):
        out = {}
        lowest = min(weights.values())
        for pod, hs in self.held.items():
            best = {}
            for k, t in hs:
                best[k] = max(best.get(k, -1.0), weights.get(t, lowest))
            n, w = 0, 0.0
            for k in keys:
                if self.spec.get((pod, k), -1.0) > now:
                    best[k] = max(best.get(k, -1.0), weights["GPU"])
                if k not in best:
                    break
                n, w = n + 1, w + best[k]
            if n:
                out[pod] = (n, w)
        return out


@pytest.mark.parametrize("weights", WEIGHT_SETS, ids=["3tiers", "2tiers", "gpu-not-best"])
@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(stream=ops)
def test_property_random_streams_match_naive_model(weights, stream):
    ix = PreciseIndex(block_size=BS, tier_weights=weights, speculative_ttl=2.0)
    ref = NaiveModel()
    now = 0.0
    for op in stream:
        kind = op[0]
        if kind in ("store", "orphan"):
            _, pod, d, start, n, tier = op
            tier = tier if tier in weights else "CPU"
            toks = UNIVERSE[d]
            nb = len(toks) // BS
            start = min(start, nb - 1)
            stop = min(start + n, nb)
            model, eng = PODS[pod]
            if kind == "orphan":
                hs = eng.hashes(toks[:stop * BS])
                ix.apply_stored(pod, hs[start:stop], 0xDEADBEEF + start, toks[start * BS:stop * BS], BS, tier, model)
            else:
                store(ix, pod, eng, toks, start, stop, tier, model)
            ref.store(pod, toks, start, stop, tier, orphan=kind == "orphan")
        elif kind == "remove":
            _, pod, d, b, tier = op
            tier = tier if tier in weights else "CPU"
            toks = UNIVERSE[d]
            b = min(b, len(toks) // BS - 1)
            model, eng = PODS[pod]
            h = eng.hashes(toks[:(b + 1) * BS])[b]
            ix.apply_removed(pod, [h], tier)
            ref.remove(pod, h if type(h) is int else int.from_bytes(h[-8:], "big"), tier)
        elif kind == "clear":
            ix.clear_pod(op[1])
            ref.held[op[1]] = set()
            for key in [key for key in ref.spec if key[0] == op[1]]:
                del ref.spec[key]
        elif kind == "spec":
            _, pod, d, n = op
            keys = ix.request_keys(UNIVERSE[d], model=PODS[pod][0], max_blocks=n)
            ix.add_speculative(pod, keys, now)
            ref.add_spec(pod, keys, now)
        else:
            now += op[1]
        check_invariants(ix)
        for pod in PODS:
            assert ix.holdings(pod) == ref.held[pod]
        assert ix.stats()["unplaceable"] == ref.unplaceable
        compare_matches(ix, ref, now, weights)


def compare_matches(ix, ref, now, weights):
    for model in ("m", "m2"):
        for toks in UNIVERSE:
            keys = ix.request_keys(toks, model=model)
            got = {p: (m.blocks, m.weighted) for p, m in ix.match(keys, now=now).items()}
            want = ref.match(keys, now, weights)
            assert got.keys() == want.keys()
            for p in got:
                assert got[p][0] == want[p][0] and got[p][1] == pytest.approx(want[p][1])
            some = ["p0", "p3", "nobody"]
            sub = ix.match(keys, pods=some, now=now)
            assert {p: m.blocks for p, m in sub.items()} == {p: want.get(p, (0, 0))[0] for p in some}


# ---- equivalence with the simulated vLLM ----------------------------------------------------------------------------
def feed(ix: PreciseIndex, pod: str, events, model="m") -> None:
    for ev in events:
        if isinstance(ev, Stored):
            ix.apply_stored(pod, ev.block_hashes, ev.parent_block_hash, ev.token_ids, ev.block_size, ev.medium,
                            model=model, lora=str(ev.lora_id) if ev.lora_id else None)
        elif isinstance(ev, Removed):
            ix.apply_removed(pod, ev.block_hashes, ev.medium)
        elif isinstance(ev, Cleared):
            ix.clear_pod(pod)


def sim_expected(e: Engine, prompt: list[int], lora: int) -> tuple[int, float]:
    """Leading blocks the sim's cache holds (its own keys), and their tier weight."""
    kv = e.kv
    r = Request("probe", list(prompt), 1, 0.0, lora_id=lora)
    n, w = 0, 0.0
    for k in kv.request_keys(r, (len(prompt) // kv.block_size) * kv.block_size):
        if k in kv.cached:
            n, w = n + 1, w + 1.0
        elif k in kv.cpu:
            n, w = n + 1, w + 0.8
        else:
            break
    return n, w


@pytest.mark.parametrize("seed,offload,hash_seed,bs", [(1, 0, 0, 4), (2, 24, 0, 4), (3, 64, 777, 4), (4, 16, 5, 4),
                                                        (5, 24, 0, 16)])
def test_equivalence_with_simulated_vllm(seed, offload, hash_seed, bs):
    rng = random.Random(seed)
    f = bs // 4        # prompt lengths scale with the block size
    e = Engine(EngineConfig(num_gpu_blocks=72, block_size=bs, max_num_seqs=4, max_num_batched_tokens=64 * f,
                            offload_blocks=offload, hash_seed=hash_seed), profiles.get("llama-8b-h100"), seed)
    ix = PreciseIndex(block_size=bs)
    prefixes = [[rng.randrange(100, 5000) for _ in range(rng.randrange(8, 60) * f)] for _ in range(5)]
    prompts: list[tuple[list[int], int]] = []
    for i in range(70):
        p = (rng.choice(prefixes)[:rng.randrange(0, 60 * f)]
             + [rng.randrange(100, 5000) for _ in range(rng.randrange(1, 40 * f))])
        prompts.append((p, rng.choice([0, 0, 0, 1])))
    pending = [Request(f"r{i}", p, rng.randrange(1, 12), 0.0, lora_id=lora) for i, (p, lora) in enumerate(prompts)]
    done: list[Request] = []
    now, checks, steps = 0.0, 0, 0
    while pending or e.has_unfinished():
        for _ in range(rng.randrange(0, 3)):
            if pending:
                e.add_request(pending.pop(0))
        out = e.step(now)
        steps += 1
        assert steps < 20_000
        if out is not None:
            now = out.end
            done += [o.request for o in out.outputs if o.finished]
        else:
            now = e.next_wakeup() or now + 0.01
        feed(ix, "p", e.kv.drain_events())
        if steps % 7:
            continue
        # probes: finished requests' whole sequences (prompt + output), prompts, prefixes, strangers
        probes = [(r.all_token_ids(), r.lora_id) for r in done[-5:]]
        probes += [(p, lora) for p, lora in rng.sample(prompts, 5)]
        probes += [(rng.choice(prefixes)[:rng.randrange(1, 60 * f)], 0), ([1, 2, 3, 4] * 5 * f, 0)]
        for toks, lora in probes:
            want_n, want_w = sim_expected(e, toks, lora)
            got = ix.match(ix.request_keys(toks, model="m", lora=str(lora) if lora else None))
            got_n = blocks(got, "p")
            assert got_n == want_n, (toks, lora)
            if want_n:
                assert got["p"].weighted == pytest.approx(want_w)
                checks += 1
        if offload == 0:           # the sim's own prefix lookup agrees too (GPU only; lookup leaves a token)
            for toks, lora in probes:
                r = Request("probe", list(toks), 1, 0.0, lora_id=lora)
                gpu, cpu = e.kv.lookup(r)
                keys = ix.request_keys(toks[:(len(toks) - 1) // bs * bs], model="m",
                                       lora=str(lora) if lora else None)
                assert blocks(ix.match(keys), "p") == len(gpu) and not cpu
    feed(ix, "p", e.kv.drain_events())
    check_invariants(ix)
    # the index holds exactly what the cache holds, tier by tier
    snap = e.kv.snapshot()
    assert len(ix) == len(set(snap["GPU"]) | set(snap["CPU"]))
    tiers = {}
    for _, t in ix.holdings("p"):
        tiers[t] = tiers.get(t, 0) + 1
    assert tiers.get("GPU", 0) == len(snap["GPU"]) and tiers.get("CPU", 0) == len(snap["CPU"])
    assert ix.stats()["unplaceable"] == 0 and ix.stats()["engine_keys"] == len(ix)
    assert checks > 20


def test_equivalence_two_engines_with_different_seeds_share_our_keys():
    """Two simulated pods with different engine hash seeds serve the same prompts: their events
    land on the same our-keys, and each pod's match equals its own cache's prefix."""
    bs = 4
    engines = {pod: Engine(EngineConfig(num_gpu_blocks=48, block_size=bs, max_num_seqs=3, max_num_batched_tokens=48,
                                        offload_blocks=16, hash_seed=s), profiles.get("llama-8b-h100"), 0)
               for pod, s in (("p", 1), ("q", 2))}
    ix = PreciseIndex(block_size=bs)
    rng = random.Random(9)
    base = [rng.randrange(100, 5000) for _ in range(40)]
    prompts = [base[:rng.randrange(4, 40)] + [rng.randrange(100, 5000) for _ in range(rng.randrange(1, 20))]
               for _ in range(30)]
    now = {p: 0.0 for p in engines}
    for i, prompt in enumerate(prompts):
        for pod, e in engines.items():
            if (i + (pod == "q")) % 3 == 0:
                continue                       # each pod sees most, not all, of the prompts
            e.add_request(Request(f"{pod}{i}", prompt, 3, 0.0))
            while e.has_unfinished():
                out = e.step(now[pod])
                now[pod] = out.end if out else (e.next_wakeup() or now[pod] + 0.01)
            feed(ix, pod, e.kv.drain_events())
        for toks in prompts[:i + 1] + [base]:
            got = ix.match(ix.request_keys(toks, model="m"))
            for pod, e in engines.items():
                assert blocks(got, pod) == sim_expected(e, toks, 0)[0]
    common = set(ix.holdings("p")) & set(ix.holdings("q"))
    assert common, "the pods share content, so they share our keys"
    assert ix.stats()["unplaceable"] == 0
    check_invariants(ix)
