"""epp-flex-role-filter (ours, not an upstream type): when a pod that can both prefill and decode (role
prefill-decode, or its alias both) acts as which, in a P/D pool that mixes such flex pods with
decode-only ones (decode, or unlabeled).

With D the decode-only candidates, F the flex ones, and from the latency model (docs/predicted-latency.md)
Q(p) the prefill work queued on p before this request, m the mean uncached prompt and n(p) the requests
whose answer p streams:

    phase decode:   keep D                  while some p in D has Q(p) < queuedPrompts x m (or Q(p) = 0)
                    keep D + F              once every p in D has that much (the pool is saturated)
                    keep F                  when D is empty
    phase prefill:  keep p in F only while n(p) = 0; endpoints that only prefill always pass

Below saturation the flex pods only prefill, so the decode-only pods' batches carry no long prefills
(P/D's E2E gain); once the decode-only pods are backing up with prefills of their own, the flex pods
take whole requests too, so every pod prefills and decodes as in an aggregated pool (its throughput).
A flex pod that streams answers takes no remote prefill: that prefill would stall its own decodes,
which is what the separate prefill is for. Measured in docs/benchmarks.md (P/D that never loses).

Parameters: phase (decode or prefill), queuedPrompts (default 1.5: with prompts of one size, two
queued), latencyScorerName (the epp-predicted-latency-scorer whose model to read; default the configured
one: the config needs one).
"""
from __future__ import annotations

from ..framework import BindsPlugins, Filter, need_number, need_str, register
from ._roles import FLEX_ROLES, ROLE_LABEL
from .epp_predicted_latency_scorer import PredictedLatencyScorer

PHASES = ("decode", "prefill")


@register
class FlexRoleFilter(Filter, BindsPlugins):
    type_name = "epp-flex-role-filter"

    def __init__(self, name: str | None = None, phase: str = "decode", queuedPrompts: float = 1.5,
                 latencyScorerName: str = "") -> None:
        super().__init__(name)
        t = self.type_name
        self.phase = need_str(t, "phase", phase, PHASES)
        self.prompts = need_number(t, "queuedPrompts", queuedPrompts, 0.0)
        self.scorer_name = need_str(t, "latencyScorerName", latencyScorerName)
        self.model = None

    def bind(self, plugins: dict) -> None:
        if self.scorer_name:
            p = plugins.get(self.scorer_name)
            if not isinstance(p, PredictedLatencyScorer):
                raise ValueError(f"latencyScorerName {self.scorer_name!r} names no epp-predicted-latency-scorer")
        else:
            found = [p for p in plugins.values() if isinstance(p, PredictedLatencyScorer)]
            if not found:
                raise ValueError("epp-flex-role-filter reads the latency model of an epp-predicted-latency-scorer; "
                                 "configure one")
            p = found[0]
        self.model = p.model

    def filter(self, state, request, endpoints):
        if self.model is None:
            raise RuntimeError(f"{self.name}: not bound to a latency model")
        if self.phase == "prefill":
            model = self.model
            return [ep for ep in endpoints if not _flex(ep) or model.decoding(ep.address) == 0]
        only = [ep for ep in endpoints if not _flex(ep)]
        if len(only) == len(endpoints) or not only:
            return list(endpoints)
        need = self.prompts * self.model.mean_uncached
        for e in self.model.estimates(state, request, only):
            queued = e.work - e.uncached
            if queued <= 0 or queued < need:
                return only
        return list(endpoints)


def _flex(ep) -> bool:
    return ep.labels.get(ROLE_LABEL) in FLEX_ROLES
