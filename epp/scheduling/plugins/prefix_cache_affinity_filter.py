"""prefix-cache-affinity-filter: when some endpoints hold at least affinityThreshold of the prompt's
prefix, keep only those ("sticky") - unless that would cost too much waiting: if the best sticky
endpoint's estimated TTFT exceeds the best other endpoint's by more than maxTTFTPenaltyMs, all stay.
TTFT is estimated as the endpoint's in-flight tokens (inflight-load-producer, named by
inFlightLoadProducerName or the configured one; the loader adds one when the gate needs it) /
peakPrefillThroughput. ttftSource latencyPredictor needs llm-d's latency-predictor sidecars, which
this EPP does not run: it is refused at start. With explorationProbability, that share of requests
skips the filter so other endpoints warm up too."""
from __future__ import annotations

import random

from ..framework import (BindsPlugins, Filter, InFlightLoadConsumer, PrefixMatchConsumer, need_number, need_str,
                         params_error, register)
from .approx_prefix_cache_producer import ApproxPrefixCacheProducer, find_prefix_producer
from .inflight_load_producer import find_inflight


@register
class PrefixCacheAffinityFilter(Filter, BindsPlugins, PrefixMatchConsumer, InFlightLoadConsumer):
    type_name = "prefix-cache-affinity-filter"

    def __init__(self, name: str | None = None, affinityThreshold: float = 0.80, explorationProbability: float = 0.0,
                 maxTTFTPenaltyMs: float = 18000, ttftSource: str = "prefillThroughput",
                 peakPrefillThroughput: float = 15928, prefixMatchInfoProducerName: str = "",
                 latencyPredictionInfoProducerName: str = "", inFlightLoadProducerName: str = "",
                 rng: random.Random | None = None) -> None:
        super().__init__(name)
        t = self.type_name
        self.threshold = need_number(t, "affinityThreshold", affinityThreshold, None, 1.0)
        self.explore = need_number(t, "explorationProbability", explorationProbability, 0.0, 1.0)
        self.max_penalty_ms = need_number(t, "maxTTFTPenaltyMs", maxTTFTPenaltyMs, 0.0)
        # latencyPredictor needs upstream's trained predictor; prefillThroughput is the model-free estimate
        if need_str(t, "ttftSource", ttftSource, ("prefillThroughput", "latencyPredictor")) == "latencyPredictor":
            raise params_error(t, "ttftSource latencyPredictor needs llm-d's latency-predictor sidecars (predicted-"
                                  "latency-producer), which this EPP does not run; use prefillThroughput")
        need_str(t, "latencyPredictionInfoProducerName", latencyPredictionInfoProducerName)
        self.peak = need_number(t, "peakPrefillThroughput", peakPrefillThroughput, 1e-9)
        self.producer_name = prefixMatchInfoProducerName
        self.producer = None
        self.inflight_name = inFlightLoadProducerName
        self.inflight = None
        self.rng = rng or random.Random()

    def match_producer(self):
        return self.producer

    def wants_default_producer(self) -> bool:
        return not self.producer_name

    def wants_inflight_load(self) -> bool:
        return self.max_penalty_ms > 0 and self.threshold > 0   # only the load gate reads it

    def bind(self, plugins: dict) -> None:
        self.producer = find_prefix_producer(plugins, self.producer_name)
        self.inflight = find_inflight(plugins, self.inflight_name)

    def _ttft_ms(self, ep) -> float:
        # built in code without a producer: request control's own count of in-flight prompt tokens
        tokens = self.inflight.load(ep.address)[1] if self.inflight is not None else ep.in_flight_tokens
        return tokens / self.peak * 1000.0

    def filter(self, state, request, endpoints):
        if self.threshold <= 0 or len(endpoints) <= 1:
            return list(endpoints)
        if self.explore and self.rng.random() < self.explore:
            return list(endpoints)
        if self.producer is None:
            self.producer = ApproxPrefixCacheProducer()
        info = self.producer.match_info(state, request)
        if not info.total:
            return list(endpoints)
        need = self.threshold * info.total
        sticky = [ep for ep in endpoints if info.matched.get(ep.address, 0) >= need]
        if not sticky or len(sticky) == len(endpoints):
            return list(endpoints)
        if self.max_penalty_ms > 0:
            others = [ep for ep in endpoints if info.matched.get(ep.address, 0) < need]
            best_sticky = min(map(self._ttft_ms, sticky))
            best_other = min(map(self._ttft_ms, others))
            if best_sticky - best_other > self.max_penalty_ms:
                return list(endpoints)
        return sticky
