"""precise-prefix-cache-scorer (deprecated upstream: configure precise-prefix-cache-producer and a
prefix-cache-scorer reading it): one plugin entry that is both, with the producer's parameters.

When a precise-prefix-cache-producer is configured elsewhere, this scorer reads that one and ignores
its own parameters (with a warning), as upstream. Otherwise it runs a producer of its own.

indexerConfig.tokenizersPoolConfig {modelName, workersCount, uds: {socketFile, useTCP,
modelTokenizerMap}} asked upstream's UDS tokenizer sidecar to tokenize prompts. This EPP does not
speak to that sidecar: the model's tokenizer is loaded in process instead, from the directory (or
tokenizer.json) uds.modelTokenizerMap gives for modelName - the same files the sidecar would read -
so the blocks are the model's. Without such a path the EPP refuses to start, naming what to set:
scoring approximately instead would look like it works while it does not.
"""
from __future__ import annotations

import logging

from ..framework import BindsPlugins, HasSubPlugins, PrefixMatchConsumer, Scorer, params_error, register
from .precise_prefix_cache_producer import PrecisePrefixCacheProducer
from .prefix_cache_scorer import PrefixCacheScorer
from .token_producer import TokenProducer

log = logging.getLogger(__name__)


def pool_tokenizer(plugin: str, pool) -> TokenProducer:
    """The in-process tokenizer standing in for a tokenizersPoolConfig's UDS sidecar."""
    if not isinstance(pool, dict):
        raise params_error(plugin, "indexerConfig.tokenizersPoolConfig must be a mapping")
    unknown = sorted(set(pool) - {"modelName", "workersCount", "uds"})
    if unknown:
        raise params_error(plugin, f"unknown field indexerConfig.tokenizersPoolConfig.{unknown[0]}; known: modelName, "
                                   f"workersCount, uds")
    model = pool.get("modelName")
    if not isinstance(model, str) or not model:
        raise params_error(plugin, "indexerConfig.tokenizersPoolConfig.modelName is required")
    uds = pool.get("uds") or {}
    if not isinstance(uds, dict) or set(uds) - {"socketFile", "useTCP", "modelTokenizerMap"}:
        raise params_error(plugin, "indexerConfig.tokenizersPoolConfig.uds takes socketFile, useTCP, modelTokenizerMap")
    path = (uds.get("modelTokenizerMap") or {}).get(model)
    if not path:
        raise params_error(plugin, f"indexerConfig.tokenizersPoolConfig asks the UDS tokenizer sidecar for {model!r}, "
                                   f"which this EPP does not use; set uds.modelTokenizerMap.{model} to the tokenizer's "
                                   f"directory (a mounted volume with tokenizer.json), or configure a token-producer "
                                   f"(vllm: {{url}} for the model server's /render, or local: {{path}})")
    log.info("%s: tokenizersPoolConfig: the tokenizer of %s is loaded in process from %s", plugin, model, path)
    return TokenProducer(name=f"{plugin}/tokenizer", modelName=model, local={"path": path})


@register
class PrecisePrefixCacheScorer(Scorer, BindsPlugins, HasSubPlugins, PrefixMatchConsumer):
    type_name = "precise-prefix-cache-scorer"
    replaced_by = "precise-prefix-cache-producer"
    bounded = True

    def __init__(self, name: str | None = None, tokenProcessorConfig: dict | None = None,
                 kvEventsConfig: dict | None = None, indexerConfig: dict | None = None,
                 speculativeIndexing: bool = False, speculativeTTL="2s", tierWeights: dict | None = None,
                 tokenProducerName: str = "", maxPrefixBlocksToMatch: int = 0) -> None:
        super().__init__(name)
        self.tokenizer = None
        if isinstance(indexerConfig, dict) and indexerConfig.get("tokenizersPoolConfig") is not None:
            indexerConfig = dict(indexerConfig)
            self.tokenizer = pool_tokenizer(self.name, indexerConfig.pop("tokenizersPoolConfig"))
        self.own = PrecisePrefixCacheProducer(
            name=f"{self.name}/producer", tokenProcessorConfig=tokenProcessorConfig, kvEventsConfig=kvEventsConfig,
            indexerConfig=indexerConfig, speculativeIndexing=speculativeIndexing, speculativeTTL=speculativeTTL,
            tierWeights=tierWeights, tokenProducerName=tokenProducerName, maxPrefixBlocksToMatch=maxPrefixBlocksToMatch)
        self.producer = self.own
        # the scoring itself is prefix-cache-scorer's (matched / total), reading this producer
        self._ratio = PrefixCacheScorer(name=f"{self.name}/ratio")
        self._ratio.producer = self.producer

    def bind(self, plugins: dict) -> None:
        peer = next((p for p in plugins.values() if isinstance(p, PrecisePrefixCacheProducer)), None)
        if peer is not None:
            log.warning("%s: a precise-prefix-cache-producer (%s) is configured: this scorer reads it and ignores "
                        "its own parameters", self.name, peer.name)
            self.producer = self._ratio.producer = peer
            return
        if self.tokenizer is not None:   # the pool's stand-in is the producer's token source
            plugins = {**plugins, self.tokenizer.name: self.tokenizer}
            self.own.token_producer_name = self.tokenizer.name
        self.own.bind(plugins)

    def sub_plugins(self) -> list:
        if self.producer is not self.own:
            return []
        return [self.own] + ([self.tokenizer] if self.tokenizer is not None else [])

    def match_producer(self):
        return self.producer

    def score(self, state, request, endpoints):
        return self._ratio.score(state, request, endpoints)
