"""epp-predicted-latency-scorer (ours, not an upstream type): the lowest predicted TTFT wins, among the
endpoints whose predicted inter-token latency stays within a budget.

For each candidate p the latency model (epp/scheduling/plugins/_latency_model.py, docs/predicted-latency.md)
predicts

    TTFT(p) = a(p) + b(p) x (queued prefill work on p + the request's uncached tokens on p)
    ITL(p)  = d(p) + min(uncached(p), maxNumBatchedTokens) x b(p)   (when p has decodes running)

with a, b learned online per endpoint from observed TTFTs and d from observed decode times. Then

    cost(p)  = TTFT(p) + (computeWeight + evictionWeight x occupancy(p)) x b_pool x uncached(p)
    eligible = {p : ITL(p) <= itlBudgetMs}   (every candidate when itlBudgetMs is 0 or none is within it)
    score(p) = min over eligible cost / cost(p)   for p eligible,   0 otherwise

so the best endpoint scores 1 and one predicted twice as slow 0.5: with the max-score picker alone, the
pick is the lowest predicted TTFT within the budget, a pod that must prefill what another holds paying
that prefill again at the pool's rate b_pool: computeWeight times (the GPU time it takes from later
requests) plus evictionWeight times how full our record of its cache is (occupancy, 0..1, from the
approximate producer: what the new blocks push out of a full cache, others will miss). Cache affinity,
load and pod speed are all in the one number: a pod holding the prefix wins until its queue costs more
than prefilling elsewhere.

Parameters: prefixMatchInfoProducerName (the producer whose matches give the cached tokens: approximate
by default, the precise one to route on the pods' KV events), prefillTokensPerSecond (prior throughput
before any observation, default 10000), itlBudgetMs (0: no budget), maxNumBatchedTokens (the pods'
vLLM setting, default 8192), failurePenaltyMs (added to a pod's prediction after it answered 5xx,
default 2000), forgetFactor (weight kept by older observations at each new one, default 0.97),
computeWeight (default 1.0; 0 ranks on TTFT alone), evictionWeight (default 1.0), affinitySlack (default
0: among the endpoints within this fraction of the best cost, the one that must prefill least wins).
"""
from __future__ import annotations

from ..framework import (BindsPlugins, HasSubPlugins, PrefixMatchConsumer, Scorer, need_int, need_number,
                         register)
from ._latency_model import LatencyModel


@register
class PredictedLatencyScorer(Scorer, BindsPlugins, HasSubPlugins, PrefixMatchConsumer):
    type_name = "epp-predicted-latency-scorer"
    bounded = True

    def __init__(self, name: str | None = None, prefixMatchInfoProducerName: str = "",
                 prefillTokensPerSecond: float = 10_000, itlBudgetMs: float = 0, maxNumBatchedTokens: int = 8192,
                 failurePenaltyMs: float = 2000, forgetFactor: float = 0.97, computeWeight: float = 1.0,
                 affinitySlack: float = 0.0, evictionWeight: float = 1.0) -> None:
        super().__init__(name)
        t = self.type_name
        self.producer_name = prefixMatchInfoProducerName
        self.itl_budget = need_number(t, "itlBudgetMs", itlBudgetMs, 0.0) / 1000.0
        self.slack = need_number(t, "affinitySlack", affinitySlack, 0.0)
        self.model = LatencyModel(
            name=f"{self.name}/model", prefix_producer=prefixMatchInfoProducerName,
            prefill_tokens_per_s=need_number(t, "prefillTokensPerSecond", prefillTokensPerSecond, 1.0),
            max_batched_tokens=need_int(t, "maxNumBatchedTokens", maxNumBatchedTokens, 1),
            failure_penalty=need_number(t, "failurePenaltyMs", failurePenaltyMs, 0.0) / 1000.0,
            forget=need_number(t, "forgetFactor", forgetFactor, 0.5, 1.0),
            compute_weight=need_number(t, "computeWeight", computeWeight, 0.0),
            evict_weight=need_number(t, "evictionWeight", evictionWeight, 0.0))
        self._own = None

    def bind(self, plugins: dict) -> None:
        self.model.bind(plugins)
        self._own = self.model.own_producer()
        if self._own is not None:
            self._own.bind(plugins)

    def sub_plugins(self) -> list:
        return [self.model] + ([self._own] if self._own is not None else [])

    def match_producer(self):
        return self.model.producer

    def wants_default_producer(self) -> bool:
        return not self.producer_name

    def score(self, state, request, endpoints):
        if self.model.producer is None:      # built in code, never bound
            self.bind({})
        est = self.model.estimates(state, request, endpoints)
        budget = self.itl_budget
        within = [e.itl <= budget for e in est] if budget > 0 else None
        if within is not None and not any(within):
            within = None
        best = min((e.cost for e, ok in zip(est, within or [True] * len(est)) if ok), default=0.0)
        if best <= 0.0:
            best = 1e-9
        ok = within or [True] * len(est)
        if self.slack > 0:
            # among the endpoints within the slack of the best, the one that must prefill least wins:
            # its cost is lowered to the best's, the others keep theirs
            limit = best * (1.0 + self.slack)
            least = min((e.uncached for e, k in zip(est, ok) if k and e.cost <= limit), default=None)
            if least is not None:
                return [1.0 if k and e.cost <= limit and e.uncached == least else
                        (0.0 if not k else min(best / e.cost, 0.999)) for e, k in zip(est, ok)]
        if within is None:
            return [best / e.cost if e.cost > best else 1.0 for e in est]
        return [(best / e.cost if e.cost > best else 1.0) if k else 0.0 for e, k in zip(est, within)]
