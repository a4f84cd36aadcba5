"""The page's periodic update, built on the event loop: the decisions since the reader's cursor (the
newest few when many arrived), the pool, and the numbers the charts plot: decisions per second, epp's
overhead percentiles, TTFT, predicted versus reported prefix-cache hit rate."""
from __future__ import annotations

import time
from collections import deque
from typing import Any

from ..datalayer.store import EndpointStore
from ..scheduling.scheduler import Scheduler
from .decisions import DecisionLog, Record
from .pool import config_view, pool_view

FEED_PER_UPDATE = 40     # decisions sent per update at most: the page shows the newest ones
PENDING = 200            # unanswered decisions a page is sent again once their answer is over
WINDOW_RECORDS = 300     # chart numbers come from the newest records...
WINDOW_SECONDS = 30.0    # ...of the last half minute
RATE_SECONDS = 2.0       # decisions per second over about this long (a half-second count is too jumpy)


def _pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def stats(records: list[Record], now_wall: float) -> dict[str, Any]:
    recent = [r for r in records[-WINDOW_RECORDS:] if now_wall - r.time <= WINDOW_SECONDS]
    over = sorted(r.overhead_s for r in recent if r.overhead_s is not None)
    ttft = sorted(t for r in recent if (t := r.ttft_s()) is not None)
    pred = cached = prompt = n = 0
    for r in recent:
        u = r.usage
        if u is not None and u.cached_reported and r.predicted is not None and u.prompt_tokens:
            pred += r.predicted
            cached += u.cached_tokens
            prompt += u.prompt_tokens
            n += 1
    return {
        "overhead_ms": {q: round(_pct(over, v) * 1e3, 3) for q, v in (("p50", .5), ("p90", .9), ("p99", .99))}
        if over else None,
        "ttft_ms": {q: round(_pct(ttft, v) * 1e3, 1) for q, v in (("p50", .5), ("p90", .9))} if ttft else None,
        "hit_rate": {"predicted": round(min(1.0, pred / prompt), 4), "reported": round(cached / prompt, 4),
                     "requests": n} if prompt else None,
        "errors": sum(1 for r in recent if r.status is not None and r.status >= 400),
        "window": len(recent),
    }


class Reader:
    """One page's view: where it is in the log and when it last looked (for the rate)."""

    def __init__(self, log: DecisionLog, store: EndpointStore, scheduler: Scheduler, staleness: float,
                 cursor: int | None = None, backlog: int = 25) -> None:
        self.log, self.store, self.scheduler, self.staleness = log, store, scheduler, staleness
        if cursor is None or cursor > log.last:   # a new page, or one from before epp restarted
            cursor = max(0, log.last - backlog)
        self.cursor = cursor
        self._samples: deque[tuple[float, int]] = deque()   # (time, log.last) of recent updates, for the rate
        self._first = True
        self._pending: list[int] = []   # seqs sent before their answer was over

    def update(self) -> dict[str, Any]:
        """Runs on the event loop: everything read here is only ever changed there."""
        log = self.log
        t, wall = time.monotonic(), time.time()
        new = log.since(self.cursor, FEED_PER_UPDATE)
        skipped = max(0, log.last - self.cursor - len(new))
        self.cursor = log.last
        done, waiting = [], []
        for seq in self._pending:      # sent while in flight: send again once over (status, TTFT, cached)
            r = log.get(seq)
            if r is not None:
                (done if r.ended else waiting).append(r)
        waiting.extend(r for r in new if not r.ended)
        self._pending = [r.seq for r in waiting[-PENDING:]]
        samples = self._samples
        samples.append((t, log.last))
        while len(samples) > 2 and t - samples[1][0] >= RATE_SECONDS:   # keep one sample older than the window
            samples.popleft()
        t_old, last_old = samples[0]
        rate = round((log.last - last_old) / (t - t_old), 2) if t > t_old else None
        out = {"time": wall, "cursor": log.last, "skipped": skipped,
               "decisions": [r.to_dict(log.show_prompts) for r in done + new],
               "pool": pool_view(self.store, self.scheduler, self.staleness),
               "stats": {"decisions_per_s": rate, **stats(log.records(), wall)}}
        if self._first:
            out["config"] = config_view(self.scheduler)
            out["show_prompts"] = log.show_prompts
            out["buffer"] = log.size
            self._first = False
        return out
