"""A scheduling profile: filters, then weighted scorers, then a picker."""
from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter
from typing import Sequence

from ..datalayer.endpoint import Endpoint
from .framework import Filter, Picker, Scorer
from .types import CycleState, LLMRequest, ProfileResult


@dataclass
class WeightedScorer:
    scorer: Scorer
    weight: float


@dataclass
class Profile:
    name: str
    picker: Picker
    filters: list[Filter] = field(default_factory=list)
    scorers: list[WeightedScorer] = field(default_factory=list)

    def plugins(self) -> list:
        return [*self.filters, *(ws.scorer for ws in self.scorers), self.picker]

    def run(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint],
            observe=None, explain: bool = False) -> ProfileResult:
        """observe(extension_point, plugin, seconds) times each plugin when given."""
        filtered = {} if explain else None
        for f in self.filters:
            t = perf_counter()
            before = len(endpoints)
            endpoints = f.filter(state, request, endpoints)
            if observe:
                observe("Filter", f, perf_counter() - t)
            if filtered is not None:
                filtered[f.name] = before - len(endpoints)
            if not endpoints:
                return ProfileResult(targets=[], filtered=filtered)
        totals = [0.0] * len(endpoints)
        table = {ep.address: {} for ep in endpoints} if explain else None
        for ws in self.scorers:
            t = perf_counter()
            scores = ws.scorer.score(state, request, endpoints)
            if observe:
                observe("Scorer", ws.scorer, perf_counter() - t)
            w = ws.weight
            if not ws.scorer.bounded:  # clamp to [0, 1]; NaN fails both comparisons and counts as 0
                scores = [s if 0.0 <= s <= 1.0 else (1.0 if s > 1.0 else 0.0) for s in scores]
            totals = [total + w * s for total, s in zip(totals, scores)]
            if table is not None:
                for ep, s in zip(endpoints, scores):
                    table[ep.address][ws.scorer.name] = round(s, 4)
        if table is not None:
            for ep, total in zip(endpoints, totals):
                table[ep.address]["total"] = round(total, 4)
        t = perf_counter()
        targets = self.picker.pick(state, request, endpoints, totals)
        if observe:
            observe("Picker", self.picker, perf_counter() - t)
        return ProfileResult(targets=targets, scores=table, filtered=filtered, candidates=endpoints, totals=totals)
