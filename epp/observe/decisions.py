"""One routing decision as the web view and /debug/decisions show it, and the ring buffer of recent ones.

A record is filled in two steps on the event loop: at the decision (references to what the scheduler
built anyway: the score tables, the picks) and when the answer is over (status, usage, timings). Turning
it into JSON-ready dicts happens only when someone asks (the page or the API), never per request."""
from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Any

PROMPT_CHARS = 2048   # how much of a prompt is kept when --ui-show-prompts is on


class Record:
    __slots__ = ("seq", "time", "request_id", "model", "target_model", "objective", "priority", "api", "stream",
                 "prompt_tokens", "prompt", "primary", "profiles", "reasons", "prefill", "prediction", "overhead_s",
                 "started", "first_byte", "ended", "status", "usage", "error", "predicted")

    def __init__(self) -> None:
        self.seq = 0
        self.first_byte = 0.0    # perf_counter of the answer's first body chunk (0: none yet)
        self.ended = 0.0
        self.status: int | None = None
        self.usage = None        # requestcontrol.usage.Usage, once the answer is over
        self.error: str | None = None
        self.prompt: bytes | None = None
        # profile -> (picked addresses, ProfileResult.raw, filtered counts)
        self.profiles: dict[str, tuple[list[str], tuple | None, dict | None]] = {}
        self.reasons = None
        self.prefill: str | None = None
        self.prediction = None   # scheduling.types.CachePrediction
        self.predicted: int | None = None   # its cached tokens in the model server's tokens, once answered
        self.objective = ""

    # ------------------------------------------------------------------ JSON

    def pick(self) -> str | None:
        prof = self.profiles.get(self.primary)
        return prof[0][0] if prof and prof[0] else None

    def candidates(self, profile: str | None = None) -> list[dict[str, Any]]:
        """The profile's scored candidates, picks first, then by total: per-scorer scores, total."""
        prof = self.profiles.get(profile or self.primary)
        if not prof or not prof[1]:
            return []
        picks = set(prof[0])
        endpoints, scorers, totals = prof[1]
        rows = [{"address": ep.address, "total": round(totals[i], 4),
                 "scores": {name: round(scores[i], 4) for name, scores in scorers}, "picked": ep.address in picks}
                for i, ep in enumerate(endpoints)]
        rows.sort(key=lambda r: (not r["picked"], -r["total"]))
        return rows

    def margin(self) -> float | None:
        """How far the pick's total is ahead of the best other candidate's (None: no runner-up)."""
        prof = self.profiles.get(self.primary)
        if not prof or not prof[1] or not prof[0]:
            return None
        pick = prof[0][0]
        endpoints, _, totals = prof[1]
        mine = [t for ep, t in zip(endpoints, totals) if ep.address == pick]
        others = [t for ep, t in zip(endpoints, totals) if ep.address != pick]
        if not mine or not others:
            return None
        return round(mine[0] - max(others), 4)

    def ttft_s(self) -> float | None:
        return self.first_byte - self.started if self.first_byte else None

    def to_dict(self, with_prompt: bool = False) -> dict[str, Any]:
        u = self.usage
        p = self.prediction
        profiles = {name: {"picks": picks, "filtered": filtered or {}, "candidates": self.candidates(name)}
                    for name, (picks, _, filtered) in self.profiles.items()}
        d = {
            "seq": self.seq, "time": self.time, "request_id": self.request_id, "model": self.model,
            "target_model": self.target_model, "objective": self.objective, "priority": self.priority,
            "api": self.api, "stream": self.stream, "prompt_tokens": self.prompt_tokens,
            "pick": self.pick(), "profile": self.primary, "margin": self.margin(),
            "candidates": self.candidates(), "profiles": profiles,
            "prefill": self.prefill, "reasons": self.reasons or {},
            "predicted_cached_tokens": (self.predicted if self.predicted is not None
                                        else p.cached_tokens if p is not None else None),
            "predicted_by": f"{p.plugin_type}/{p.plugin_name}" if p is not None else None,
            "cached_tokens": u.cached_tokens if u is not None and u.cached_reported else None,
            "reported_prompt_tokens": u.prompt_tokens if u is not None and u.seen else None,
            "completion_tokens": u.completion_tokens if u is not None and u.seen else None,
            "overhead_ms": round(self.overhead_s * 1e3, 3) if self.overhead_s is not None else None,
            "ttft_ms": round(t * 1e3, 1) if (t := self.ttft_s()) is not None else None,
            "duration_ms": round((self.ended - self.started) * 1e3, 1) if self.ended else None,
            "status": self.status, "done": bool(self.ended), "error": self.error,
        }
        if with_prompt and self.prompt is not None:
            d["prompt"] = self.prompt.decode("utf-8", "replace")
        return d


class DecisionLog:
    """The last `size` records; `seq` numbers them from 1 so a reader resumes with `since`."""

    def __init__(self, size: int = 1000, show_prompts: bool = False) -> None:
        if size < 1:
            raise ValueError("the decision log needs room for at least one decision")
        self.size = size
        self.show_prompts = show_prompts
        self._ring: deque[Record] = deque(maxlen=size)
        self.last = 0        # seq of the newest record (0: none yet)

    def add(self, rec: Record) -> None:
        self.last += 1
        rec.seq = self.last
        self._ring.append(rec)

    def __len__(self) -> int:
        return len(self._ring)

    def records(self) -> list[Record]:
        return list(self._ring)

    def since(self, cursor: int, limit: int | None = None) -> list[Record]:
        """Records newer than seq `cursor`, oldest first; with `limit`, only the newest `limit` of them."""
        ring = self._ring
        if not ring or cursor >= self.last:
            return []
        start = max(0, cursor + 1 - ring[0].seq)   # seqs in the ring are consecutive
        if limit is not None:
            start = max(start, len(ring) - limit)
        return list(islice(ring, start, None))

    def get(self, seq: int) -> Record | None:
        ring = self._ring
        i = seq - ring[0].seq if ring else -1
        return ring[i] if 0 <= i < len(ring) else None

    def oldest(self) -> int:
        return self._ring[0].seq if self._ring else self.last + 1
