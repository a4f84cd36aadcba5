"""prefix-cache-scorer: how much of the prompt's prefix each endpoint holds, from a prefix-match
producer (the approximate one by default).

score = (1 - w) x matched/total + w x min(1, matched_tokens / matchLengthScaleTokens)^2, with
w = matchLengthWeight (default 0: the plain ratio, as upstream). A weight above 0 lets a long match
count for more than a short one of the same ratio (GIE #2561): a 50-token prompt matched in full
saves little prefill, a 6,000-token system prompt matched at 60% saves a lot.

Older (GIE <= v1.2) configs put the hashing parameters (blockSize in characters, blockSizeTokens,
maxPrefixBlocksToMatch, maxPrefixTokensToMatch, lruCapacityPerServer, autoTune) on this scorer. llm-d
router v0.10 refuses them and GIE v1.5 ignores them; here they still work, with the meaning they had
then, and give the scorer a producer of its own (a deviation, logged with a warning).
"""
from __future__ import annotations

import logging

from ..framework import (BindsPlugins, HasSubPlugins, PrefixMatchConsumer, PrefixMatchProducer, Scorer,
                         need_number, register)
from .approx_prefix_cache_producer import ApproxPrefixCacheProducer, find_prefix_producer

log = logging.getLogger(__name__)

_LEGACY = ("autoTune", "blockSize", "blockSizeTokens", "maxPrefixBlocksToMatch", "maxPrefixTokensToMatch",
           "lruCapacityPerServer")


@register
class PrefixCacheScorer(Scorer, BindsPlugins, HasSubPlugins, PrefixMatchConsumer):
    type_name = "prefix-cache-scorer"
    bounded = True

    def __init__(self, name: str | None = None, prefixMatchInfoProducerName: str = "",
                 matchLengthWeight: float = 0.0, matchLengthScaleTokens: int = 8192,
                 autoTune: bool | None = None, blockSize: int | None = None, blockSizeTokens: int | None = None,
                 maxPrefixBlocksToMatch: int | None = None, maxPrefixTokensToMatch: int | None = None,
                 lruCapacityPerServer: int | None = None) -> None:
        super().__init__(name)
        t = self.type_name
        self.length_weight = need_number(t, "matchLengthWeight", matchLengthWeight, 0.0, 1.0)
        self.length_scale = need_number(t, "matchLengthScaleTokens", matchLengthScaleTokens, 1.0)
        self.producer_name = prefixMatchInfoProducerName
        legacy = {k: v for k, v in zip(_LEGACY, (autoTune, blockSize, blockSizeTokens, maxPrefixBlocksToMatch,
                                                  maxPrefixTokensToMatch, lruCapacityPerServer)) if v is not None}
        if legacy and prefixMatchInfoProducerName:
            raise ValueError(f"{t}: hashing parameters {sorted(legacy)} belong on the producer "
                             f"{prefixMatchInfoProducerName!r}, not on the scorer")
        self.own_producer = bool(legacy)
        if legacy:
            log.warning("%s: hashing parameters %s on the scorer are the pre-v1.3 form (llm-d router v0.10 refuses "
                        "them); they configure a producer of the scorer's own", self.name, sorted(legacy))
            if "blockSize" in legacy:   # then in characters, ~4 per token
                bs = legacy.pop("blockSize")
                if isinstance(bs, int) and not isinstance(bs, bool) and bs > 0:
                    legacy.setdefault("blockSizeTokens", max(1, bs // 4))
            if "maxPrefixBlocksToMatch" in legacy:   # then the block cap was the cap
                legacy.setdefault("maxPrefixTokensToMatch", 0)
        # a producer of its own until bind() finds the configured one (used as is when built in code)
        self.producer = ApproxPrefixCacheProducer(name=f"{self.name}/producer", **legacy)

    def bind(self, plugins: dict) -> None:
        if self.own_producer:
            self.producer.bind(plugins)
            return
        if self.producer_name:
            p = plugins.get(self.producer_name)
            if p is None:
                raise ValueError(f"prefixMatchInfoProducerName {self.producer_name!r} names no configured plugin")
            if not isinstance(p, PrefixMatchProducer):
                raise ValueError(f"prefixMatchInfoProducerName {self.producer_name!r} ({p.type_name}) "
                                 f"produces no prefix match information")
            self.producer = p
            return
        # without a name: the default producer (named approx-prefix-cache-producer), which the loader
        # creates with upstream's defaults when the config declares none by that name
        found = find_prefix_producer(plugins, "")
        if found is not None:
            self.producer = found

    def match_producer(self):
        return self.producer

    def wants_default_producer(self) -> bool:
        return not self.own_producer and not self.producer_name

    def carried_producer(self):
        return self.producer if self.own_producer else None

    def sub_plugins(self) -> list:
        return [self.producer]

    def score(self, state, request, endpoints):
        info = self.producer.match_info(state, request)
        n = info.total
        if not n:
            return [0.0] * len(endpoints)
        matched = info.matched
        w = self.length_weight
        if not w:
            return [matched.get(ep.address, 0) / n for ep in endpoints]
        scale = self.length_scale / info.block_tokens
        out = []
        for ep in endpoints:
            m = matched.get(ep.address, 0)
            length = min(1.0, m / scale)
            out.append((1.0 - w) * m / n + w * length * length)
        return out
