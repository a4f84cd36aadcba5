#!/usr/bin/env python3
"""Cost of the precise prefix index (epp/kvcache/precise_index.py) on the request and event paths.

    .venv/bin/python hack/bench_precise_index.py [--keys 1000000] [--pods 64] [--blocks 1024] [--quick]

Populates an index with --keys of our keys spread over --pods pods (each pod's own documents, 128-block
BlockStored batches, a third of them also in CPU), then measures, in-process, single thread:

- match(): a --blocks-block prompt against the whole pool in several shapes (every pod holds every
  block in GPU; in GPU+CPU; pod i holds a prefix proportional to i; nobody holds block 0; 8 pods with
  live speculative entries), plus request_keys() for the same prompt;
- apply_stored(): per block, for batches of 1, 16 and 128 blocks (new blocks, chained on a known
  parent, on the populated index with LRU eviction active), and apply_removed() per block;
- bytes per entry (tracemalloc), for a few holding patterns.

Prints markdown tables.
"""
from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import tracemalloc

from epp.kvcache.precise_index import PreciseIndex

BS = 16
perf = time.perf_counter_ns


class Doc:
    """A token sequence with fake engine hashes (random uint64, as an engine with an unknown seed)."""
    __slots__ = ("tokens", "ehash")

    def __init__(self, base: int, blocks: int, rng: random.Random):
        self.tokens = list(range(base, base + blocks * BS))
        self.ehash = [rng.getrandbits(64) for _ in range(blocks)]

    def store(self, ix: PreciseIndex, pod: str, start: int, stop: int, medium: str = "GPU") -> None:
        ix.apply_stored(pod, self.ehash[start:stop], self.ehash[start - 1] if start else None,
                        self.tokens[start * BS:stop * BS], BS, medium, "model")


def timeit(fn, reps: int, between=None) -> tuple[float, float]:
    """median and p99 in microseconds; `between` runs untimed after each call."""
    ts = []
    for _ in range(reps):
        t0 = perf()
        fn()
        ts.append((perf() - t0) / 1e3)
        if between is not None:
            between()
    ts.sort()
    return statistics.median(ts), ts[min(len(ts) - 1, int(len(ts) * 0.99))]


def populate(ix: PreciseIndex, pods: list[str], keys: int, rng: random.Random) -> int:
    """Background content: each pod stores its own documents until the index holds `keys` entries."""
    base = 10_000_000
    t0 = perf()
    n = 0
    i = 0
    while len(ix) < keys:
        pod = pods[i % len(pods)]
        d = Doc(base, 128, rng)
        base += 128 * BS + 7
        d.store(ix, pod, 0, 128)
        if i % 3 == 0:
            d.store(ix, pod, 0, 128, "CPU")
        n += 128
        i += 1
    return n, (perf() - t0) / 1e9


def bench_match(ix: PreciseIndex, pods: list[str], blocks: int, reps: int, rng: random.Random) -> list[tuple]:
    rows = []
    doc = Doc(1, blocks, rng)
    keys = ix.request_keys(doc.tokens, model="model")
    med, p99 = timeit(lambda: ix.request_keys(doc.tokens, model="model"), reps)
    rows.append((f"request_keys ({blocks} blocks, {blocks * BS} tokens)", med, p99, ""))

    for p in pods:
        doc.store(ix, p, 0, blocks)
    r = ix.match(keys)
    assert len(r) == len(pods) and all(m.blocks == blocks for m in r.values())
    med, p99 = timeit(lambda: ix.match(keys), reps, ix._flush_touches)
    rows.append((f"match: all {len(pods)} pods hold all {blocks} blocks (GPU)", med, p99, "worst case walk"))

    def touch():
        ix.match(keys)
        t0 = perf()
        ix._flush_touches()
        ts.append((perf() - t0) / 1e3)
    ts: list[float] = []
    for _ in range(reps):
        touch()
    ts.sort()
    rows.append((f"  its LRU touch of {blocks} keys, deferred to the next event", statistics.median(ts),
                 ts[int(len(ts) * 0.99)], "event path, not request path"))
    med, p99 = timeit(lambda: ix.match(keys, pods=pods), reps, ix._flush_touches)
    rows.append((f"  same, with an explicit list of {len(pods)} pods", med, p99, ""))
    med, p99 = timeit(lambda: ix.match(keys[:64]), reps, ix._flush_touches)
    rows.append(("match: all pods hold a 64-block prompt", med, p99, "1k-token prompt"))

    for p in pods:
        doc.store(ix, p, 0, blocks, "CPU")
    r = ix.match(keys)
    assert all(m.weighted == blocks for m in r.values())
    med, p99 = timeit(lambda: ix.match(keys), reps, ix._flush_touches)
    rows.append(("match: all pods hold all blocks in GPU+CPU", med, p99, "tiered path, best tier = GPU"))
    for p in pods[::2]:
        ix.apply_removed(p, doc.ehash[:blocks], "GPU")
    r = ix.match(keys)
    assert r[pods[0]].weighted == blocks * 0.8 or abs(r[pods[0]].weighted - blocks * 0.8) < 1e-6
    med, p99 = timeit(lambda: ix.match(keys), reps, ix._flush_touches)
    rows.append(("match: half the pods hold them in CPU only", med, p99, "per-pod weight accumulation"))

    for p in pods:
        ix.clear_pod(p)
    populate(ix, pods, ix.max_keys, rng)
    for i, p in enumerate(pods):   # pod i holds a prefix proportional to i
        n = max(1, blocks * (i + 1) // len(pods))
        doc.store(ix, p, 0, n)
    r = ix.match(keys)
    assert r[pods[-1]].blocks == blocks and r[pods[0]].blocks == max(1, blocks // len(pods))
    med, p99 = timeit(lambda: ix.match(keys), reps, ix._flush_touches)
    rows.append((f"match: pod i holds (i+1)/{len(pods)} of the prompt", med, p99, "pods drop out one by one"))

    other = Doc(2, blocks, rng)
    okeys = ix.request_keys(other.tokens, model="model")
    med, p99 = timeit(lambda: ix.match(okeys), reps, ix._flush_touches)
    rows.append(("match: nobody holds block 0", med, p99, "cache miss"))

    now = time.monotonic()
    for p in pods[:8]:
        ix.add_speculative(p, okeys, now)
    r = ix.match(okeys, now=now)
    assert len(r) == 8 and all(m.blocks == blocks for m in r.values())
    med, p99 = timeit(lambda: ix.match(okeys, now=now), reps, ix._flush_touches)
    rows.append(("match: 8 pods hold all blocks speculatively", med, p99, "speculative path"))
    return rows


def bench_events(ix: PreciseIndex, pods: list[str], reps: int, rng: random.Random) -> list[tuple]:
    rows = []
    for batch in (1, 16, 128):
        base = 1_000_000_000 + batch * 10_000_000
        docs = [Doc(base + i * 3_000, 129, rng) for i in range(max(4, reps * batch // 128 + 1))]
        for i, d in enumerate(docs):
            d.store(ix, pods[i % len(pods)], 0, 1)     # block 0 known: later batches chain on it
        work = []
        for i, d in enumerate(docs):
            pod = pods[i % len(pods)]
            for s in range(1, 129, batch):
                work.append((d, pod, s, s + batch))
        work = work[:reps]
        ts = []
        for d, pod, a, b in work:
            t0 = perf()
            d.store(ix, pod, a, b)
            ts.append((perf() - t0) / 1e3 / batch)
        ts.sort()
        rows.append((f"apply_stored, {batch}-block batches (per block)", statistics.median(ts),
                     ts[int(len(ts) * 0.99)], f"{len(ts)} batches, evictions on"))
        if batch == 16:
            ts = []
            for d, pod, a, b in work:
                t0 = perf()
                ix.apply_removed(pod, d.ehash[a:b], "GPU")
                ts.append((perf() - t0) / 1e3 / batch)
            ts.sort()
            rows.append(("apply_removed, 16-block batches (per block)", statistics.median(ts),
                         ts[int(len(ts) * 0.99)], ""))
    return rows


def bytes_per_entry(n: int, rng: random.Random) -> list[tuple]:
    rows = []
    shapes = [
        ("1 pod, GPU", [("a", "GPU", 0)]),
        ("1 pod, GPU + CPU", [("a", "GPU", 0), ("a", "CPU", 0)]),
        ("4 pods (same engine), GPU", [(p, "GPU", 0) for p in "abcd"]),
        ("2 pods, engines with other seeds", [("a", "GPU", 0), ("b", "GPU", 1)]),
        ("1 pod of 64 (bit 63), GPU", [("p63", "GPU", 0)]),
    ]
    for name, holders in shapes:
        docs = [Doc(1 + i * 10_000, 128, rng) for i in range(n // 128)]
        alt = [[rng.getrandbits(64) for _ in range(128)] for _ in docs]
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        ix = PreciseIndex(block_size=BS, max_keys=n + 1)
        for i in range(63):                 # pods p0..p62 exist so that "p63" gets bit 63
            if name.startswith("1 pod of 64"):
                ix._bit(f"p{i}")
        for d, a in zip(docs, alt):
            for pod, medium, eng in holders:
                ix.apply_stored(pod, d.ehash if eng == 0 else a, None, d.tokens, BS, medium, "model")
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        entries = len(ix)
        rows.append((name, entries, used / entries, ix.stats()["engine_keys"]))
        del ix, docs, alt
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--pods", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--mem-keys", type=int, default=200_000)
    ap.add_argument("--quick", action="store_true", help="100k keys, fewer repetitions")
    a = ap.parse_args()
    if a.quick:
        a.keys, a.reps, a.mem_keys = 100_000, 50, 50_000
    rng = random.Random(0)
    pods = [f"10.0.{i // 256}.{i % 256}:8000" for i in range(a.pods)]
    ix = PreciseIndex(block_size=BS, max_keys=a.keys)
    stored, secs = populate(ix, pods, a.keys, rng)
    s = ix.stats()
    print(f"Python {sys.version.split()[0]}; index: {s['entries']:,} keys, {s['engine_keys']:,} engine-key mappings, "
          f"{s['tiered_entries']:,} also in CPU, {s['pods']} pods; populated with {stored:,} blocks "
          f"in {secs:.1f} s ({secs / stored * 1e6:.2f} us/block, 128-block batches)\n")
    rows = bench_match(ix, pods, a.blocks, a.reps, rng)
    rows += bench_events(ix, pods, a.reps * 4, rng)
    print("| operation | median us | p99 us | note |\n| --- | ---: | ---: | --- |")
    for name, med, p99, note in rows:
        print(f"| {name} | {med:,.1f} | {p99:,.1f} | {note} |")
    s = ix.stats()
    print(f"\nafter: {s['entries']:,} keys, {s['evictions']:,} LRU evictions, "
          f"{s['engine_keys']:,} engine-key mappings\n")
    del ix
    gc.collect()
    print("| holding pattern | entries | bytes / entry (tracemalloc) | engine-key mappings |\n"
          "| --- | ---: | ---: | ---: |")
    for name, entries, per, emaps in bytes_per_entry(a.mem_keys, rng):
        print(f"| {name} | {entries:,} | {per:,.0f} | {emaps:,} |")


if __name__ == "__main__":
    main()
