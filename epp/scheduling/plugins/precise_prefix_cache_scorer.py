"""precise-prefix-cache-scorer (upstream's older single-plugin form): a precise-prefix-cache-producer
and a prefix-cache-scorer reading it, configured by one plugin entry with the producer's parameters.
Newer configs name the two plugins separately; both work."""
from __future__ import annotations

from ..framework import BindsPlugins, HasSubPlugins, PrefixMatchConsumer, Scorer, register
from .precise_prefix_cache_producer import PrecisePrefixCacheProducer
from .prefix_cache_scorer import PrefixCacheScorer


@register
class PrecisePrefixCacheScorer(Scorer, BindsPlugins, HasSubPlugins, PrefixMatchConsumer):
    type_name = "precise-prefix-cache-scorer"
    bounded = True

    def __init__(self, name: str | None = None, tokenProcessorConfig: dict | None = None,
                 kvEventsConfig: dict | None = None, indexerConfig: dict | None = None,
                 speculativeIndexing: bool = False, speculativeTTL="2s", tierWeights: dict | None = None,
                 tokenProducerName: str = "", maxPrefixBlocksToMatch: int = 0) -> None:
        super().__init__(name)
        self.producer = PrecisePrefixCacheProducer(
            name=f"{self.name}/producer", tokenProcessorConfig=tokenProcessorConfig, kvEventsConfig=kvEventsConfig,
            indexerConfig=indexerConfig, speculativeIndexing=speculativeIndexing, speculativeTTL=speculativeTTL,
            tierWeights=tierWeights, tokenProducerName=tokenProducerName, maxPrefixBlocksToMatch=maxPrefixBlocksToMatch)
        # the scoring itself is prefix-cache-scorer's (matched / total), reading this producer
        self._ratio = PrefixCacheScorer(name=f"{self.name}/ratio")
        self._ratio.producer = self.producer

    def bind(self, plugins: dict) -> None:
        self.producer.bind(plugins)

    def sub_plugins(self) -> list:
        return [self.producer]

    def match_producer(self):
        return self.producer

    def score(self, state, request, endpoints):
        return self._ratio.score(state, request, endpoints)
