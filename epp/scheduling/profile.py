"""A scheduling profile: filters, then weighted scorers, then a picker."""
from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter
from typing import Sequence

from .. import tracing
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
            observe=None, explain: bool = False, span=None, record: bool = False) -> ProfileResult:
        """observe(extension_point, plugin, seconds) times each plugin when given. explain: the score
        table (the decision header); record: the scores as computed (ProfileResult.raw, the web view);
        `span` (--tracing, a sampled request) gets the filter, scoring and pick steps as child spans."""
        if span is not None:
            return self._run_traced(state, request, endpoints, observe, explain, span, record)
        filtered = {} if explain or record else None
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
        raw = [] if record else None
        for ws in self.scorers:
            t = perf_counter()
            scores = ws.scorer.score(state, request, endpoints)
            if observe:
                observe("Scorer", ws.scorer, perf_counter() - t)
            w = ws.weight
            if not ws.scorer.bounded:  # clamp to [0, 1]; NaN fails both comparisons and counts as 0
                scores = [s if 0.0 <= s <= 1.0 else (1.0 if s > 1.0 else 0.0) for s in scores]
            totals = [total + w * s for total, s in zip(totals, scores)]
            if raw is not None:
                raw.append((ws.scorer.name, tuple(scores)))
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
        return ProfileResult(targets=targets, scores=table, filtered=filtered, candidates=endpoints, totals=totals,
                             raw=(endpoints, raw, totals) if raw is not None else None)

    def _run_traced(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint],
                    observe, explain: bool, span, record: bool = False) -> ProfileResult:
        """run() with upstream's spans around each step; the steps are run() itself, one stage at a time."""
        gen_ai = {"gen_ai.request.model": request.target_model, "gen_ai.request.id": request.request_id}
        S = tracing.SCHEDULING
        sp = tracing.start(S, "filter_endpoints", span, {"llm_d.epp.filter.candidate_endpoints": len(endpoints), **gen_ai})
        nopick = _NoPick()
        pre = Profile(self.name, nopick, self.filters, []).run(
            state, request, endpoints, observe and (lambda point, p, t: p is nopick or observe(point, p, t)), explain,
            record=record)
        # the filters' survivors: the no-op picker hands every remaining candidate back
        survivors = pre.targets
        sp.set_attribute("llm_d.epp.filter.filtered_endpoints", len(survivors))
        sp.end()
        if not survivors:
            return pre
        sp = tracing.start(S, "llm_d.epp.scoring", span, {"llm_d.epp.scorer.count": len(self.scorers),
                                                          "llm_d.epp.scoring.candidate_endpoints": len(survivors), **gen_ai})
        scorers = [WeightedScorer(_TracedScorer(ws.scorer, ws.weight, sp, len(survivors)), ws.weight)
                   for ws in self.scorers]
        picks = _RecordingPicker(self.picker, span, gen_ai, len(survivors), sp)
        result = Profile(self.name, picks, [], scorers).run(state, request, survivors, observe, explain, record=record)
        if pre.filtered:
            result.filtered = {**pre.filtered, **(result.filtered or {})}
        return result


class _NoPick:
    """Picks every candidate: run() with it and no scorers returns what the filters kept."""
    name = type_name = "filters-only"

    def pick(self, state, request, endpoints, scores):
        return list(endpoints)


class _TracedScorer:
    """A scorer in a llm_d.epp.scorer.<type> span, with the score statistics upstream records."""

    def __init__(self, scorer, weight: float, parent, n: int) -> None:
        self.scorer, self.weight, self.parent, self.n = scorer, weight, parent, n
        self.name, self.type_name, self.bounded = scorer.name, scorer.type_name, scorer.bounded

    def score(self, state, request, endpoints):
        sp = tracing.start(tracing.SCHEDULING, f"llm_d.epp.scorer.{self.type_name}", self.parent, {
            "llm_d.epp.scorer.type": self.type_name, "llm_d.epp.scorer.name": self.name,
            "llm_d.epp.scorer.weight": self.weight, "llm_d.epp.scorer.candidate_endpoints": self.n})
        try:
            scores = self.scorer.score(state, request, endpoints)
            if scores:
                sp.set_attribute("llm_d.epp.scorer.score.max", float(max(scores)))
                sp.set_attribute("llm_d.epp.scorer.score.avg", float(sum(scores) / len(scores)))
            sp.set_attribute("llm_d.epp.scorer.endpoints_scored", len(scores))
            return scores
        finally:
            sp.end()


class _RecordingPicker:
    """Ends the scoring span when the picker starts, and runs the picker in a pick_endpoints span."""

    def __init__(self, picker, parent, gen_ai: dict, n: int, scoring) -> None:
        self.picker, self.parent, self.gen_ai, self.n, self.scoring = picker, parent, gen_ai, n, scoring
        self.name, self.type_name = picker.name, picker.type_name

    def pick(self, state, request, endpoints, scores):
        self.scoring.end()
        sp = tracing.start(tracing.SCHEDULING, "pick_endpoints", self.parent,
                           {"llm_d.epp.picker.candidate_endpoints": self.n, **self.gen_ai})
        try:
            targets = self.picker.pick(state, request, endpoints, scores)
            by_addr = dict(zip((ep.address for ep in endpoints), scores))
            sp.set_attribute("llm_d.epp.picker.top_endpoints", [ep.address for ep in targets])
            sp.set_attribute("llm_d.epp.picker.top_scores", [float(by_addr.get(ep.address, 0.0)) for ep in targets])
            return targets
        finally:
            sp.end()
