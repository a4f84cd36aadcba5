"""Virtual time: the simulation's clock, and epp's clock reads pointed at it during a run.

epp reads time only through time.monotonic (metric freshness, speculative-index and session TTLs,
saturation staleness). While a simulation runs, time.monotonic answers the virtual clock (offset so
that a first scrape at t = 0 is not mistaken for "never scraped"); nothing else in the process runs
meanwhile (no event loop, no threads of ours), and it is restored afterwards.
"""
from __future__ import annotations

import contextlib
import time

EPOCH = 1000.0


class VirtualClock:
    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return EPOCH + self.now

    @contextlib.contextmanager
    def installed(self):
        real = time.monotonic
        time.monotonic = self.monotonic
        try:
            yield self
        finally:
            time.monotonic = real
