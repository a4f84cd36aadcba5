"""In-flight eviction (`enableEviction: true`), as upstream's reclamation controller does it.

Every dispatched request is tracked until its stream ends; the sheddable ones (priority < 0) are the
candidates, lowest priority first, then most recently dispatched. When a band that holds queued
requests is gated by saturation, the dispatch cycle asks for capacity back: each in-flight request is
worth saturation / in-flight of the gauge, so ceil((saturation - ceiling - pending) / credit) victims,
at most 2 per decision and only of priority strictly below the waiting band. A victim's stream is
ended by request control (429, reason `evicted`). No new decision is made while a revocation is
unconfirmed (its stream has not ended; 10 s timeout) or cooling (the grace after confirmation, until
the freed capacity shows in the detector's reading)."""
from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from typing import Callable

from .metrics import FlowMetrics

log = logging.getLogger(__name__)

MAX_REVOCATIONS_PER_DECISION = 2
CONFIRMATION_TIMEOUT = 10.0


class _Tracked:
    __slots__ = ("key", "priority", "dispatched", "evict", "seq")

    def __init__(self, key, priority: int, dispatched: float, evict: Callable[[], None], seq: int) -> None:
        self.key = key
        self.priority = priority
        self.dispatched = dispatched
        self.evict = evict
        self.seq = seq


def _signal(t: _Tracked) -> None:
    try:
        t.evict()
    except Exception:
        log.exception("evicting request %s failed", t.key)


class InFlight:
    """Dispatched requests until their streams end (upstream's RequestEvictor and EvictionQueue)."""

    def __init__(self) -> None:
        self.tracked: dict = {}
        self._heap: list[tuple[tuple, _Tracked]] = []   # sheddable ones; entries of untracked keys are stale
        self._seq = 0
        self.pending: set = set()                        # evicted, stream not ended yet
        self.on_terminated: Callable[[object], None] | None = None

    def track(self, key, priority: int, evict: Callable[[], None]) -> None:
        self._seq += 1
        t = _Tracked(key, priority, time.monotonic(), evict, self._seq)
        self.tracked[key] = t
        if priority < 0:   # sheddable-eviction-filter
            # priority-then-time-eviction-order-policy: lowest priority, then the latest dispatched
            heapq.heappush(self._heap, ((priority, -t.dispatched, -t.seq), t))
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self.tracked):
            self._heap = [e for e in self._heap if self.tracked.get(e[1].key) is e[1]]
            heapq.heapify(self._heap)

    def untrack(self, key) -> None:
        self.tracked.pop(key, None)
        if key in self.pending:   # an eviction's stream has ended: confirmed
            self.pending.discard(key)
            if self.on_terminated is not None:
                self.on_terminated(key)

    def _head(self) -> _Tracked | None:
        h = self._heap
        while h and self.tracked.get(h[0][1].key) is not h[0][1]:
            heapq.heappop(h)
        return h[0][1] if h else None

    def stats(self) -> tuple[int, int]:
        """(in flight, evictable); an evicted request no longer counts in either."""
        evictable = sum(1 for _, t in self._heap if self.tracked.get(t.key) is t)
        return len(self.tracked), evictable

    def victim_priority(self) -> int | None:
        t = self._head()
        return t.priority if t is not None else None

    def evict(self, n: int, bound: int) -> list:
        out = []
        for _ in range(n):
            t = self._head()
            if t is None or t.priority >= bound:
                break
            heapq.heappop(self._heap)
            del self.tracked[t.key]
            self.pending.add(t.key)
            # the signal goes out on the next loop turn (as upstream closes a channel the stream's loop
            # selects on): the revocation is on the books before its stream can end and confirm it
            asyncio.get_running_loop().call_soon(_signal, t)
            out.append(t.key)
        return out


class Reclaimer:
    """Paces evictions (upstream's ReclamationController)."""

    def __init__(self, inflight: InFlight, grace: float, metrics: FlowMetrics | None) -> None:
        self.inflight = inflight
        self.grace = grace
        self.metrics = metrics
        self.outstanding: dict = {}               # key -> (credit, issued at)
        self.cooling: list[tuple[float, float]] = []   # (credit, expires at)
        self.pending = 0.0
        inflight.on_terminated = self.confirm

    def _pool(self) -> str:
        return self.metrics.pool if self.metrics else ""

    def gate_open(self, now: float) -> bool:
        for key, (credit, issued) in list(self.outstanding.items()):
            if now - issued >= CONFIRMATION_TIMEOUT:
                del self.outstanding[key]
                self.cooling.append((credit, now + self.grace))
                if self.metrics:
                    for c in self.metrics.revocations.labels("timed_out", self._pool()):
                        c.inc()
                log.info("flow control: revocation of %s not confirmed in %.0fs; treating as confirmed",
                         key, CONFIRMATION_TIMEOUT)
        if self.cooling:
            kept = [(c, exp) for c, exp in self.cooling if now < exp]
            if len(kept) != len(self.cooling):
                self.pending = max(0.0, self.pending - sum(c for c, exp in self.cooling if now >= exp))
                self.cooling = kept
                self._gauge(self.metrics.pending_reclaim if self.metrics else None, self.pending)
        return not self.outstanding and not self.cooling

    def _gauge(self, family, value: float) -> None:
        if family is not None:
            self.metrics.set_gauge(family, value, self._pool())

    def confirm(self, key) -> None:
        entry = self.outstanding.pop(key, None)
        if entry is None:
            return
        now = time.monotonic()
        self.cooling.append((entry[0], now + self.grace))
        if self.metrics:
            for c in self.metrics.revocations.labels("confirmed", self._pool()):
                c.inc()
            for h in self.metrics.confirmation.labels(self._pool()):
                h.observe(now - entry[1])

    def maybe_reclaim(self, saturation: float, priorities: list[int], ceilings: list[float], gated: int,
                      bands) -> None:
        """Called when band `gated` (an index into priorities) is gated: reclaim for the first band from
        there that holds queued requests and ranks above the best victim."""
        if not self.gate_open(time.monotonic()):
            return
        victim = self.inflight.victim_priority()
        if victim is None:
            return
        for j in range(gated, len(priorities)):
            p = priorities[j]
            if p <= victim:
                return
            if ceilings[j] <= 0 or saturation < ceilings[j]:
                continue
            band = bands.get(p)
            if band is None or not band.len:
                continue
            self.reclaim(saturation, ceilings[j], p)
            return

    def reclaim(self, saturation: float, ceiling: float, demand: int) -> None:
        in_flight, evictable = self.inflight.stats()
        if in_flight <= 0 or evictable <= 0:
            return
        credit = saturation / in_flight
        if not credit > 0 or math.isinf(credit):
            return
        target = saturation - ceiling
        net = target - self.pending
        self._gauge(self.metrics.reclaim_target if self.metrics else None, target)
        if net < 0 or (net == 0 and self.pending > 0):
            return
        n = min(max(1, math.ceil(net / credit)), MAX_REVOCATIONS_PER_DECISION, evictable)
        now = time.monotonic()
        evicted = self.inflight.evict(n, demand)
        for key in evicted:
            self.outstanding[key] = (credit, now)
            self.pending += credit
        if evicted:
            log.info("flow control: evicting %d in-flight sheddable request(s) for priority %d (saturation %.2f, "
                     "ceiling %.2f)", len(evicted), demand, saturation, ceiling)
            if self.metrics:
                for c in self.metrics.revocations_issued.labels(str(demand), self._pool()):
                    c.inc(len(evicted))
        self._gauge(self.metrics.pending_reclaim if self.metrics else None, self.pending)
