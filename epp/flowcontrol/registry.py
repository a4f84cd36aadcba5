"""The priority bands and what is queued in them: totals for the global caps, the capacity check at
enqueue, bands provisioned for the priorities objectives use, and garbage collection of idle flows
and bands (upstream's timeouts: a flow idle 5 minutes, a provisioned band idle 10)."""
from __future__ import annotations

import logging

from .config import BAND_GC_TIMEOUT, FLOW_GC_TIMEOUT, FlowControlConfig
from .queues import Band, FlowItem

log = logging.getLogger(__name__)


class Registry:
    def __init__(self, cfg: FlowControlConfig, now: float) -> None:
        self.cfg = cfg
        self.bands: dict[int, Band] = {}
        self.static = set(cfg.bands)          # configured: never collected
        self.desired: set[int] = set()        # priorities the objectives use
        self.len = 0
        self.bytes = 0
        self.priorities: list[int] = []       # highest first
        self._warned_fallback: set[int] = set()
        for p, bc in cfg.bands.items():
            self.bands[p] = Band(bc, self, now)
        self._order()

    def _order(self) -> None:
        self.priorities = sorted(self.bands, reverse=True)

    # counts, kept by the bands
    def added(self, item: FlowItem) -> None:
        self.len += 1
        self.bytes += item.size

    def removed(self, item: FlowItem) -> None:
        self.len -= 1
        self.bytes -= item.size

    def band_for(self, priority: int) -> Band:
        """The request's band; a priority without one (no objective asked for it) falls back to 0."""
        b = self.bands.get(priority)
        if b is not None:
            return b
        if priority not in self._warned_fallback and len(self._warned_fallback) < 1000:
            self._warned_fallback.add(priority)
            log.info("flow control: priority band %d is not provisioned, falling back to priority 0", priority)
        return self.bands[0]

    def has_room(self, band: Band, size: int) -> bool:
        c = self.cfg
        if c.max_bytes and self.bytes + size > c.max_bytes:
            return False
        if c.max_requests and self.len + 1 > c.max_requests:
            return False
        return band.has_room(size)

    def set_desired(self, priorities: set[int], now: float) -> None:
        """The objectives' priorities: each gets a band from the templates; a provisioned band no longer
        desired goes once it is idle."""
        self.desired = set(priorities)
        changed = False
        for p in self.desired:
            if p not in self.bands:
                log.info("flow control: provisioning priority band %d", p)
                self.bands[p] = Band(self.cfg.template(p), self, now)
                changed = True
        for p in list(self.bands):
            b = self.bands[p]
            if p not in self.static and p not in self.desired and b.len == 0:
                del self.bands[p]
                changed = True
        if changed:
            self._order()

    def gc(self, now: float) -> None:
        for p in list(self.bands):
            b = self.bands[p]
            for fid in [fid for fid, f in b.flows.items() if not f.live and now - f.last_used >= FLOW_GC_TIMEOUT]:
                del b.flows[fid]
            if (p not in self.static and p not in self.desired and not b.len
                    and now - b.last_used >= BAND_GC_TIMEOUT):
                del self.bands[p]
                self._order()
