"""token-load-scorer: fewer tokens in flight on an endpoint is better, this request's included.

tokens = the endpoint's in-flight tokens (inflight-load-producer, the one named by
inFlightLoadProducerName or the configured one) + this request's prompt tokens the endpoint does not
have cached; score = 1 when tokens <= 0, else 1 - min(tokens, T) / T with T = queueThresholdTokens
(4,194,304 = 128 requests of 32K tokens; <= 0 means the default).
"""
from __future__ import annotations

from ..framework import BindsPlugins, InFlightLoadConsumer, Scorer, need_int, register
from .inflight_load_producer import find_inflight

DEFAULT_THRESHOLD = 4_194_304


@register
class TokenLoadScorer(Scorer, BindsPlugins, InFlightLoadConsumer):
    type_name = "token-load-scorer"
    bounded = True

    def __init__(self, name: str | None = None, queueThresholdTokens: int = DEFAULT_THRESHOLD,
                 inFlightLoadProducerName: str = "") -> None:
        super().__init__(name)
        t = need_int(self.type_name, "queueThresholdTokens", queueThresholdTokens, -(1 << 62))
        self.threshold = float(t if t > 0 else DEFAULT_THRESHOLD)
        self.producer_name = inFlightLoadProducerName
        self.producer = None

    def wants_inflight_load(self) -> bool:
        return True

    def bind(self, plugins: dict) -> None:
        self.producer = find_inflight(plugins, self.producer_name)

    def score(self, state, request, endpoints):
        p = self.producer
        if p is None:      # built in code without a producer: nothing is in flight
            return [1.0] * len(endpoints)
        t = self.threshold
        out = []
        for ep in endpoints:
            tokens = p.load(ep.address)[1] + p.uncached_tokens(state, request, ep)
            out.append(1.0 if tokens <= 0 else 1.0 - min(tokens, t) / t)
        return out
