"""The flow controller: admits a request at once while its band is open, else queues it and releases
queued requests one per dispatch cycle as capacity frees (upstream's FlowController and Processor).

Event-driven where upstream polls: a cycle runs after each enqueue, and is requested (coalesced, next
loop turn) whenever capacity may have freed: a metrics scrape, a request's stream ending, the pool
changing. While cycles keep dispatching they repeat every millisecond (upstream's tick), so a freed
pool drains at upstream's pace rather than in one burst on a reading that lags the scrape; once a cycle
is gated nothing runs until the next event. Expiry is a timer on the oldest queued request (every
request has the same budget per regime, so enqueue order is expiry order), not a 1 s sweep.

Cycle: saturation of the whole pool (per stage, stages.py); ceilings from the usage-limit policy;
bands from the highest priority down: a band whose ceiling the saturation reaches stops the cycle
(strict priority: it gates every band below it too; with eviction on, in-flight sheddable requests
may be revoked for it); otherwise the band's fairness policy picks a flow and its head item (ordering
policy) is dispatched. One item per cycle.

Budgets: defaultRequestTTL while the pool has endpoints (EvictedTTL), noEndpointRequestTTL while it
has none (EvictedNoEndpoints); a change of regime restarts every queued request's clock; 0 = never.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from functools import partial
from typing import Callable, Sequence

from ..datalayer.endpoint import Endpoint
from ..scheduling.framework import SaturationDetector
from . import outcomes as O
from .config import FlowControlConfig
from .eviction import InFlight, Reclaimer
from .metrics import FlowMetrics
from .queues import FlowItem
from .registry import Registry
from .stages import Stages

log = logging.getLogger(__name__)

DISPATCH_TICK = 0.001      # upstream's dispatch ticker, used while cycles keep dispatching
GC_INTERVAL = 30.0
GAUGE_INTERVAL = 0.005
SETTLE_MAX = 0.005         # longest a dispatch may go unreported before the next one ignores it
# Many requests ended at once (shutdown, a TTL that expires a burst) are answered a batch at a time,
# FINALIZE_GAP apart, so the loop keeps serving in between and the answers reach Envoy as a stream
# rather than one burst. Envoy resets the ext_proc stream of every immediate response and drops its
# connection to epp once more than 1,000 control frames queue on it; pacing alone made that rarer
# (1 run in ~12 of the 10,000-queued shutdown test before, still seen in CI after), the native
# transport's PING fence (server/h2connection.py, FENCE_LIMIT) is what bounds it. 10,000 answers take
# ~0.2 s.
FINALIZE_BATCH = 128
FINALIZE_GAP = 0.002


class FlowController:
    def __init__(self, cfg: FlowControlConfig, detector: SaturationDetector,
                 snapshot: Callable[[], Sequence[Endpoint]], metrics: FlowMetrics | None = None,
                 eviction_grace: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.detector = detector
        self.snapshot = snapshot
        self.metrics = metrics
        self.clock = clock
        now = clock()
        self.registry = Registry(cfg, now)
        self.running = True
        self._stages: Stages | None = None
        self._empty = False              # the regime seen last: the pool had no endpoints
        self._empty_since = 0.0          # when that last changed (0: never)
        self._fifo: deque[FlowItem] = deque()    # queued items in enqueue order = expiry order
        self._seq = 0
        # dispatch times of queued requests released but not yet scheduled: until request control
        # reports them (settled), the detector has not seen them, and a cycle would release on a stale
        # reading (a new request's enqueue runs a cycle before the released one is scheduled)
        self._unsettled: deque[float] = deque()
        self._pump: asyncio.Handle | None = None
        self._sweep: asyncio.Handle | None = None
        self._sweep_at = 0.0
        self._next_gc = now + GC_INTERVAL
        self._children: dict[tuple, tuple] = {}
        self._gauges_at = 0.0
        self._reading: tuple | None = None   # (saturation, the pool it was read on, valid until)
        self.inflight: InFlight | None = None
        self.reclaimer: Reclaimer | None = None
        if cfg.enable_eviction:
            self.inflight = InFlight()
            self.reclaimer = Reclaimer(self.inflight, eviction_grace, metrics)

    # ---------------------------------------------------------------- admission

    def submit(self, request_id: str, fairness_id: str, priority: int, size: int, model: str = "",
               target_model: str = "") -> O.Result | asyncio.Future:
        """The outcome now (dispatched, or rejected), or a future of it while the request waits."""
        t0 = time.perf_counter()
        now = self.clock()
        if now >= self._next_gc:
            self._next_gc = now + GC_INTERVAL
            self.registry.gc(now)
        reg = self.registry
        band = reg.band_for(priority)
        prio = band.priority
        m = self.metrics
        fid = m.fairness(fairness_id) if m else fairness_id
        if not self.running:
            self._finished_now(O.SHUTDOWN_NEW, fid, prio, model, target_model, t0)
            return O.SHUTDOWN_NEW
        room = reg.has_room(band, size)
        if room and not reg.len and not self._settling(now):
            # nothing waits anywhere: the request passes at once when its band is open (the common,
            # unsaturated case: no queue, no future, no task)
            sat = self._saturation()
            if self._open_for(prio, sat):
                self._finished_now(O.DISPATCHED_RESULT, fid, prio, model, target_model, t0)
                return O.DISPATCHED_RESULT
        if not room:
            r = O.NO_ENDPOINTS_AT_CAPACITY if self._empty else O.CAPACITY
            self._finished_now(r, fid, prio, model, target_model, t0)
            return r
        self._seq += 1
        ttl = self.cfg.default_ttl
        item = FlowItem(request_id, fairness_id, prio, size, now, ttl, self._seq, model, target_model)
        band.flow_for(fairness_id, now).push(item, now)
        self._fifo.append(item)
        if m:
            m.queued(fid, str(prio), model, target_model, size, 1)
            m.enqueued(fid, str(prio), O.NOT_YET_FINALIZED, time.perf_counter() - t0)
        if self._cycle():   # as upstream: a cycle right after each enqueue
            self._tick()    # it released one: keep draining at the tick's pace
        if item.result is not None:
            return item.result
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(partial(self._future_done, item))
        item.future = fut
        self._arm_sweep()
        return fut

    def _finished_now(self, r: O.Result, fid: str, prio: int, model: str, target: str, t0: float) -> None:
        m = self.metrics
        if m is None:
            return
        key = (fid, prio, model, target, r.outcome)
        c = self._children.get(key)
        if c is None:
            p = str(prio)
            # the queue gauges' series exist from a flow's first request, as upstream's inc/dec makes them
            m.queued(fid, p, model, target, 0, 0)
            c = self._children[key] = (m.requests.labels(r.outcome, p, m.pool),
                                       m.queue_duration.labels(fid, p, r.outcome, m.pool, model, target),
                                       m.enqueue_duration.labels(fid, p, O.NOT_YET_FINALIZED if r.dispatched
                                                                 else r.outcome))
        requests, queue, enqueue = c
        dt = time.perf_counter() - t0
        for x in requests:
            x.inc()
        for x in queue:
            x.observe(dt)
        for x in enqueue:
            x.observe(dt)

    def _future_done(self, item: FlowItem, fut: asyncio.Future) -> None:
        if fut.cancelled() and item.result is None:   # the caller stopped waiting: its client left
            self._finalize(item, O.CLIENT_LEFT)
            self.kick()

    def _finalize(self, item: FlowItem, r: O.Result) -> None:
        if item.result is not None:
            return
        item.result = r
        now = self.clock()
        if item.flow is not None:
            item.flow.remove(item, now)
        m = self.metrics
        if m:
            fid, p = m.fairness(item.fairness_id), str(item.priority)
            m.queued(fid, p, item.model, item.target_model, item.size, -1)
            m.finished(fid, p, item.model, item.target_model, r.outcome, now - item.enqueue_time)
        if r.outcome != O.DISPATCHED:
            log.debug("flow control: request %s dropped: %s", item.request_id, r.outcome)
        fut = item.future
        if fut is not None and not fut.done():
            if r.outcome == O.DISPATCHED:
                self._unsettled.append(now)
            fut.set_result(r)

    # ---------------------------------------------------------------- saturation and gating

    def _observe_pool(self) -> Stages:
        snap = self.snapshot()
        st = self._stages
        if st is None or st.snapshot is not snap:
            st = self._stages = Stages(snap)
        empty = not st.pool
        if empty != self._empty:
            self._empty = empty
            self._empty_since = self.clock()
            if self._fifo:
                self._arm_sweep(rearm=True)   # every queued request's budget starts over
        return st

    def _saturation(self) -> float:
        st = self._observe_pool()
        r = self._reading
        if r is not None and r[1] is st and self.clock() < r[2]:
            return r[0]   # nothing the reading depends on has changed (a scraped-metrics detector)
        sat, pre, dec, until = st.saturation(self.detector)
        self._reading = (sat, st, until) if until > 0 else None
        m = self.metrics
        t = time.perf_counter()
        if m and t >= self._gauges_at:
            # gauges are sampled by Prometheus every few seconds: refreshing them at most every few ms
            # keeps their cost off the per-request path
            self._gauges_at = t + GAUGE_INTERVAL
            m.set_saturation("effective", sat)
            m.set_saturation("prefill", pre)
            m.set_saturation("decode", dec)
            stale = self.detector.stale_endpoints
            if stale is not None:
                m.set_gauge(m.stale, stale, self.detector.name)
        return sat

    def pool_empty(self) -> bool:
        """Whether the pool has no endpoint now (request control's probe for a TTL eviction)."""
        return not self._observe_pool().pool

    def _open_for(self, priority: int, sat: float) -> bool:
        """Whether a request of `priority` would be dispatched now: no band from the highest down to its
        own is gated (empty higher bands gate too, as upstream's cycle checks before selecting)."""
        prios = self.registry.priorities
        ceilings = self.cfg.usage_limit.compute_limits(sat, prios)
        for p, c in zip(prios, ceilings):
            if sat >= c:
                return False
            if p == priority:
                return True
        return False

    # ---------------------------------------------------------------- dispatch

    def _settling(self, now: float) -> bool:
        u = self._unsettled
        while u and now - u[0] > SETTLE_MAX:
            u.popleft()   # never reported (e.g. its client left meanwhile): stop waiting for it
        return bool(u)

    def settled(self) -> None:
        """Request control has scheduled (or given up on) a request released from the queue."""
        if self._unsettled:
            self._unsettled.popleft()
        self.kick()

    def _cycle(self) -> bool:
        """One dispatch cycle; True when it released a request."""
        if self._settling(self.clock()):
            self._pump_settle()
            return False
        t0 = time.perf_counter()
        reg = self.registry
        sat = self._saturation()
        prios = reg.priorities
        ceilings = self.cfg.usage_limit.compute_limits(sat, prios)
        self._utilization()
        dispatched = False
        for i, p in enumerate(prios):
            if sat >= ceilings[i]:
                if self.reclaimer is not None:
                    self.reclaimer.maybe_reclaim(sat, prios, ceilings, i, reg.bands)
                break
            band = reg.bands[p]
            if not band.len:
                continue
            try:
                flow = band.cfg.fairness.pick_flow(band, band.state)
            except Exception:
                log.exception("fairness policy %s failed; skipping band %d this cycle", band.cfg.fairness.name, p)
                continue
            if flow is None:
                continue
            item = flow.pop_head(self.clock())
            if item is None:
                continue
            self._finalize(item, O.DISPATCHED_RESULT)
            dispatched = True
            break
        if self.metrics:
            self.metrics.cycle(time.perf_counter() - t0)
        return dispatched

    def _utilization(self) -> None:
        m = self.metrics
        if m is None:
            return
        reg, pool = self.registry, m.pool
        for p, b in reg.bands.items():
            m.set_gauge(m.band_util_requests, b.len / b.cfg.max_requests, str(p), pool)
            m.set_gauge(m.band_util_bytes, b.bytes / b.cfg.max_bytes, str(p), pool)
        if self.cfg.max_requests:
            m.set_gauge(m.global_util_requests, reg.len / self.cfg.max_requests, pool)
        if self.cfg.max_bytes:
            m.set_gauge(m.global_util_bytes, reg.bytes / self.cfg.max_bytes, pool)

    def metrics_changed(self) -> None:
        """New metrics were scraped, or the pool changed: the detector must be read again."""
        self._reading = None
        self.kick()

    def kick(self) -> None:
        """Capacity may have freed (a scrape, a completion, a pool change): run a cycle soon."""
        if self._pump is None and self.registry.len and self.running:
            self._pump = asyncio.get_running_loop().call_soon(self._run_pump)

    def _pump_settle(self) -> None:
        """A cycle waits for a release to settle: the report kicks it, or this timer if none comes."""
        if self._pump is None and self.registry.len and self.running and self._unsettled:
            wait = max(0.0, self._unsettled[0] + SETTLE_MAX - self.clock())
            self._pump = asyncio.get_running_loop().call_later(wait, self._run_pump)

    def _tick(self) -> None:
        if self._pump is None and self.registry.len and self.running:
            self._pump = asyncio.get_running_loop().call_later(DISPATCH_TICK, self._run_pump)

    def _run_pump(self) -> None:
        self._pump = None
        if not self.registry.len or not self.running:
            return
        if self._cycle():
            self._tick()

    # ---------------------------------------------------------------- expiry

    def _budget(self) -> tuple[float, O.Result, float]:
        """(budget, the eviction's result, the regime's start) in force now."""
        if self._empty:
            return self.cfg.no_endpoint_ttl, O.NO_ENDPOINTS_TTL, self._empty_since
        return self.cfg.default_ttl, O.TTL, self._empty_since

    def _arm_sweep(self, rearm: bool = False) -> None:
        if rearm and self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self._sweep is not None:
            return
        fifo = self._fifo
        while fifo and fifo[0].result is not None:
            fifo.popleft()
        if not fifo:
            return
        budget, _, since = self._budget()
        if budget <= 0:
            return   # no expiry in this regime; a regime change re-arms
        head = fifo[0]
        due = max(head.enqueue_time, since) + budget
        self._sweep_at = due
        self._sweep = asyncio.get_running_loop().call_later(max(0.0, due - self.clock()), self._run_sweep)

    def _run_sweep(self) -> None:
        self._sweep = None
        self._observe_pool()
        now = self.clock()
        budget, result, since = self._budget()
        fifo = self._fifo
        expired = 0
        while fifo and expired < FINALIZE_BATCH:   # a batch per loop turn (see _finalize_batches)
            item = fifo[0]
            if item.result is not None:
                fifo.popleft()
                continue
            if budget <= 0 or max(item.enqueue_time, since) + budget > now:
                break
            fifo.popleft()
            self._finalize(item, result)
            expired += 1
        if len(fifo) > 1024 and len(fifo) > 2 * self.registry.len:
            self._fifo = deque(i for i in fifo if i.result is None)
        if expired >= FINALIZE_BATCH:   # more may be due: the next batch after the gap
            self._sweep_at = now + FINALIZE_GAP
            self._sweep = asyncio.get_running_loop().call_later(FINALIZE_GAP, self._run_sweep)
        else:
            self._arm_sweep()
        if expired:
            self.kick()

    # ---------------------------------------------------------------- control plane and lifecycle

    def set_desired_priorities(self, priorities: set[int]) -> None:
        """The priorities the InferenceObjectives use: each gets a band (from the templates)."""
        self.registry.set_desired(priorities, self.clock())

    def stop(self) -> int:
        """Shutdown: every queued request ends now (EvictedOther: not running); new ones are refused.
        Returns how many were queued."""
        if not self.running:
            return 0
        self.running = False
        for h in (self._pump, self._sweep):
            if h is not None:
                h.cancel()
        self._pump = self._sweep = None
        items = [i for i in self._fifo if i.result is None]
        self._fifo.clear()
        self._finalize_batches(items, O.SHUTDOWN_QUEUED)
        if items:
            log.info("flow control stopped: %d queued request(s) answered 503", len(items))
        return len(items)

    def _finalize_batches(self, items: list[FlowItem], r: O.Result) -> None:
        """Ends many requests a batch at a time, FINALIZE_GAP apart (see FINALIZE_BATCH): thousands of
        answers in one turn would also keep the loop from reading the proxy's side meanwhile."""
        for item in items[:FINALIZE_BATCH]:
            self._finalize(item, r)
        if len(items) > FINALIZE_BATCH:
            asyncio.get_running_loop().call_later(FINALIZE_GAP, self._finalize_batches, items[FINALIZE_BATCH:], r)

    # eviction bookkeeping, from request control
    def track(self, key, priority: int, evict: Callable[[], None]) -> None:
        if self.inflight is not None:
            self.inflight.track(key, priority, evict)

    def untrack(self, key) -> None:
        if self.inflight is not None:
            self.inflight.untrack(key)

    @property
    def queued(self) -> int:
        return self.registry.len
