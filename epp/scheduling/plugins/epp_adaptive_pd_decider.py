"""epp-adaptive-pd-decider (ours, not an upstream type): a separate prefill only when it pays now.

With the decode pod d already picked, the latency model (docs/predicted-latency.md) predicts for this
request the TTFT of prefilling on d itself and on each prefill pod p:

    u(d)   = prompt tokens - tokens d already holds
    local  = TTFT(d) = a(d) + b(d) x (prefill queued on d + u(d))
    remote = min over prefill pods p of TTFT(p) = a(p) + b(p) x (prefill queued on p + u(p))
             (the prefill pods: those the prefill profile's filters keep, d excepted)
             (a(p) is learned from disaggregated requests, so it includes the KV transfer)

    disaggregate  iff  u(d) >= minUncachedTokens        the uncached part is long enough to stall d's batch
                  and  remote <= headroom x local        the prefill pods have headroom now

Otherwise the decode pod prefills the request itself. headroom (default 3) is what a first token may
cost in extra wait to keep a long prefill out of the decode pod's batch: a prefill on d stalls every
decode running there for as long as it takes (min(u, maxNumBatchedTokens) x b(d) per step), which the
request's own TTFT does not show. At light and moderate load the prefill pods have headroom and long
prompts go there (the decode pods' ITL and E2E stay those of pure decode); when the prefill pods' queues
grow past headroom x what the decode pod would take, prefill work flows back to the decode pods instead
of queueing on too few prefill pods, so throughput stays near the same pods aggregated.

Parameters: minUncachedTokens (default 512), headroom (default 3.0), latencyScorerName (the
epp-predicted-latency-scorer whose model to share; default: the configured one, else a model of the
decider's own), prefixMatchInfoProducerName (for a model of its own), maxNumBatchedTokens (same).
Decisions are counted with reasons: uncached (disaggregated), below_threshold, prefill_busy,
no_prefill_pod.
"""
from __future__ import annotations

from ..framework import BindsPlugins, need_int, need_number, register
from ..types import CANDIDATES
from ._disagg import BELOW_THRESHOLD, NO_PREFILL_POD, UNCACHED, PDDecider
from ._latency_model import LatencyModel
from ._roles import PREFILL_ROLES, ROLE_LABEL
from .epp_predicted_latency_scorer import PredictedLatencyScorer

PREFILL_BUSY = "prefill_busy"        # the prefill pods' queues would make the first token later


@register
class AdaptivePDDecider(PDDecider, BindsPlugins):
    type_name = "epp-adaptive-pd-decider"

    def __init__(self, name: str | None = None, minUncachedTokens: int = 512, headroom: float = 3.0,
                 latencyScorerName: str = "", prefixMatchInfoProducerName: str = "",
                 maxNumBatchedTokens: int = 8192) -> None:
        super().__init__(name)
        t = self.type_name
        self.min_uncached = need_int(t, "minUncachedTokens", minUncachedTokens, 0)
        self.headroom = need_number(t, "headroom", headroom, 0.0)
        self.scorer_name = latencyScorerName
        self.producer_name = prefixMatchInfoProducerName
        self.chunk = need_int(t, "maxNumBatchedTokens", maxNumBatchedTokens, 1)
        self.model: LatencyModel | None = None
        self._own: list = []
        self._prefill_filters: list = []

    def bind(self, plugins: dict) -> None:
        if self.scorer_name:
            p = plugins.get(self.scorer_name)
            if not isinstance(p, PredictedLatencyScorer):
                raise ValueError(f"latencyScorerName {self.scorer_name!r} names no epp-predicted-latency-scorer")
            self.model = p.model
            return
        found = [p for p in plugins.values() if isinstance(p, PredictedLatencyScorer)]
        if found:
            self.model = found[0].model
            return
        self.model = LatencyModel(name=f"{self.name}/model", prefix_producer=self.producer_name,
                                  max_batched_tokens=self.chunk)
        self.model.bind(plugins)
        own = self.model.own_producer()
        if own is not None:
            own.bind(plugins)
        self._own = [self.model] + ([own] if own is not None else [])

    def attach_prefill(self, prefill_profile) -> None:
        self._prefill_filters = list(prefill_profile.filters)

    def sub_plugins(self) -> list:
        return list(self._own)

    def decide(self, state, request, endpoint):
        if self.model is None:
            self.bind({})
        model = self.model
        local = model.estimates(state, request, [endpoint])[0]
        if local.uncached < self.min_uncached:
            return False, BELOW_THRESHOLD, (f"{local.uncached} tokens uncached on {endpoint.address} < "
                                            f"minUncachedTokens {self.min_uncached}")
        prefill = [ep for ep in state.get(CANDIDATES) or () if ep.labels.get(ROLE_LABEL) in PREFILL_ROLES
                   and ep.address != endpoint.address]
        for f in self._prefill_filters:       # only the pods the prefill profile could pick
            if not prefill:
                break
            prefill = f.filter(state, request, prefill)
        if not prefill:
            return False, NO_PREFILL_POD, "no prefill endpoint among the candidates"
        remote = min(model.estimates(state, request, prefill), key=lambda e: e.ttft)
        what = (f"TTFT remote {remote.ttft * 1e3:.0f} ms vs local {local.ttft * 1e3:.0f} ms (headroom "
                f"{self.headroom:g}), {local.uncached} tokens uncached on {endpoint.address}")
        if remote.ttft <= self.headroom * local.ttft:
            return True, UNCACHED, what
        return False, PREFILL_BUSY, what
