"""Queued requests, flow queues and priority bands: the views the policy plugins read
(scheduling/types.py), with the bookkeeping flow control keeps on them.

A flow queue is a heap ordered by the band's ordering policy. Removing an item that is not at the head
(its client left, or it expired) only marks it; the counts drop at once and the heap is compacted when
the marked entries outnumber the live ones, so memory stays proportional to what is queued."""
from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from ..scheduling.types import BandView, FlowQueueView, QueueItemView

if TYPE_CHECKING:
    import asyncio

    from .config import BandConfig
    from .outcomes import Result

_COMPACT_MIN = 64


class FlowItem(QueueItemView):
    __slots__ = ("request_id", "fairness_id", "priority", "size", "enqueue_time", "effective_ttl", "seq",
                 "model", "target_model", "flow", "result", "future")

    def __init__(self, request_id: str, fairness_id: str, priority: int, size: int, enqueue_time: float,
                 ttl: float, seq: int, model: str = "", target_model: str = "") -> None:
        self.request_id = request_id
        self.fairness_id = fairness_id
        self.priority = priority
        self.size = size
        self.enqueue_time = enqueue_time
        self.effective_ttl = ttl
        self.seq = seq
        self.model = model
        self.target_model = target_model
        self.flow: FlowQueue | None = None           # while queued
        self.result: Result | None = None            # once finalized
        self.future: asyncio.Future | None = None    # what the caller awaits, once it waits


class FlowQueue(FlowQueueView):
    __slots__ = ("fairness_id", "band", "heap", "live", "bytes", "dead", "last_used")

    def __init__(self, fairness_id: str, band: "Band", now: float) -> None:
        self.fairness_id = fairness_id
        self.band = band
        self.heap: list[tuple[tuple, FlowItem]] = []
        self.live = 0
        self.bytes = 0
        self.dead = 0          # removed items still in the heap
        self.last_used = now

    def __len__(self) -> int:
        return self.live

    def _drop_dead_head(self) -> None:
        heap = self.heap
        while heap and heap[0][1].flow is not self:
            heapq.heappop(heap)
            self.dead -= 1

    def peek(self) -> FlowItem | None:
        self._drop_dead_head()
        return self.heap[0][1] if self.heap else None

    def head_key(self) -> tuple | None:
        self._drop_dead_head()
        return self.heap[0][0] if self.heap else None

    def push(self, item: FlowItem, now: float) -> None:
        # keys end with the item's unique seq, so the heap never compares items themselves
        heapq.heappush(self.heap, (self.band.cfg.ordering.order_key(item), item))
        item.flow = self
        self.live += 1
        self.bytes += item.size
        self.last_used = now
        self.band.added(self, item)

    def pop_head(self, now: float) -> FlowItem | None:
        self._drop_dead_head()
        if not self.heap:
            return None
        item = heapq.heappop(self.heap)[1]
        self._detach(item, now)
        return item

    def remove(self, item: FlowItem, now: float) -> None:
        """Takes a queued item out (counts at once; its heap entry goes lazily)."""
        self._detach(item, now)
        if not self.live:
            return          # _detach emptied the heap
        self.dead += 1
        if self.dead > _COMPACT_MIN and self.dead > self.live:
            self.heap = [e for e in self.heap if e[1].flow is self]
            heapq.heapify(self.heap)
            self.dead = 0

    def _detach(self, item: FlowItem, now: float) -> None:
        item.flow = None
        self.live -= 1
        self.bytes -= item.size
        if not self.live:   # whatever is left in the heap is removed items
            self.heap.clear()
            self.dead = 0
        self.last_used = now
        self.band.removed(self, item)


class Band(BandView):
    """A priority band: its config (caps, policies), its flows and the fairness policy's state."""

    __slots__ = ("priority", "cfg", "flows", "active", "state", "len", "bytes", "registry", "last_used")

    def __init__(self, cfg: "BandConfig", registry, now: float) -> None:
        self.priority = cfg.priority
        self.cfg = cfg
        self.flows: dict[str, FlowQueue] = {}
        self.active: dict[str, FlowQueue] = {}     # flows with queued items
        self.state = cfg.fairness.new_band_state()
        self.len = 0
        self.bytes = 0
        self.registry = registry
        self.last_used = now

    def flow_ids(self) -> list[str]:
        return list(self.flows)

    def flow(self, fairness_id: str) -> FlowQueue | None:
        return self.flows.get(fairness_id)

    def active_flows(self) -> list[FlowQueue]:
        return list(self.active.values())

    def flow_for(self, fairness_id: str, now: float) -> FlowQueue:
        f = self.flows.get(fairness_id)
        if f is None:
            f = self.flows[fairness_id] = FlowQueue(fairness_id, self, now)
        return f

    def added(self, flow: FlowQueue, item: FlowItem) -> None:
        self.len += 1
        self.bytes += item.size
        if flow.live == 1:
            self.active[flow.fairness_id] = flow
        self.registry.added(item)

    def removed(self, flow: FlowQueue, item: FlowItem) -> None:
        self.len -= 1
        self.bytes -= item.size
        if flow.live == 0:
            self.active.pop(flow.fairness_id, None)
        self.last_used = flow.last_used
        self.registry.removed(item)

    def has_room(self, size: int) -> bool:
        c = self.cfg
        return self.bytes + size <= c.max_bytes and self.len + 1 <= c.max_requests
