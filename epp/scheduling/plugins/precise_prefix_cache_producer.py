"""precise-prefix-cache-producer: which endpoints really hold the prompt's prefix, from vLLM's KV events.

Each pod publishes KV events over ZMQ (central mode: epp binds kvEventsConfig.zmqEndpoint and every pod
connects; pod mode, discoverPods: epp connects to each endpoint's publisher on podDiscoveryConfig's
port). The events feed an index of our own block keys per pod and tier (epp/kvcache/precise_index.py).
At request time the prompt's tokens (from a token-producer with the model's tokenizer) are cut into
blocks of tokenProcessorConfig.blockSize and matched: per endpoint, the run of blocks from block 0 it
holds, each weighted by its best tier (tierWeights, GPU 1.0, CPU 0.8). Other plugins read the
unweighted block count (a CPU block is a whole block of cached tokens, e.g. for the P/D decider).

Without real tokens (no token-producer with a tokenizer, or a request that cannot be tokenized) the
request falls back to the approximate producer, and the fallback is counted: routing never fails for
want of tokens. With speculativeIndexing the pick is entered in the index at routing time for
speculativeTTL, so a burst of one prefix does not miss while the pod's events are still on the way.
"""
from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ...datalayer.address import host_port
from ...metrics import LiveCollector
from ..framework import (
    BackgroundTask,
    BindsPlugins,
    EndpointLifecycle,
    HasSubPlugins,
    KVEventStatus,
    Plugin,
    PrefixMatchProducer,
    PreRequest,
    ResponseComplete,
    StateDumper,
    need_bool,
    need_duration,
    need_int,
    params_error,
    register,
)
from ..types import DEFER, PREDICTION, CachePrediction, MatchInfo
from .approx_prefix_cache_producer import ApproxPrefixCacheProducer
from .token_producer import TokenProducer

log = logging.getLogger(__name__)
CHECK_EVERY = 8
MAX_DUMP_SUBSCRIBERS = 100   # upstream's cap on the debug dump

FALLBACKS = Counter("epp_precise_prefix_fallback_total",
                    "Requests the precise prefix producer scored approximately instead, by reason.", ["reason"])
TOKEN_MISMATCH = Counter("epp_tokenizer_mismatch_total",
                         "Requests whose prompt token count from epp's tokenizer differs from the model server's.")


def _section(plugin: str, name: str, v, keys: set[str]) -> dict:
    v = v or {}
    if not isinstance(v, dict):
        raise params_error(plugin, f"{name} must be a mapping")
    unknown = sorted(set(v) - keys)
    if unknown:
        raise params_error(plugin, f"unknown field {name}.{unknown[0]}; known: {', '.join(sorted(keys))}")
    return v


@register
class PrecisePrefixCacheProducer(Plugin, PrefixMatchProducer, PreRequest, EndpointLifecycle, ResponseComplete,
                                 BindsPlugins, HasSubPlugins, BackgroundTask, StateDumper, KVEventStatus):
    type_name = "precise-prefix-cache-producer"

    def __init__(self, name: str | None = None, tokenProcessorConfig: dict | None = None,
                 kvEventsConfig: dict | None = None, indexerConfig: dict | None = None,
                 speculativeIndexing: bool = False, speculativeTTL="2s", tierWeights: dict | None = None,
                 tokenProducerName: str = "", maxPrefixBlocksToMatch: int = 0) -> None:
        super().__init__(name)
        t = self.type_name
        tp = _section(t, "tokenProcessorConfig", tokenProcessorConfig, {"blockSize", "blockSizeTokens", "hashSeed"})
        # blockSize is the deprecated name of blockSizeTokens; 0 or unset means vLLM's 16
        self.block_size = need_int(t, "tokenProcessorConfig.blockSizeTokens",
                                   tp.get("blockSizeTokens") or tp.get("blockSize") or 16, 1)
        self.hash_seed = str(tp.get("hashSeed", ""))
        ev = _section(t, "kvEventsConfig", kvEventsConfig,
                      {"zmqEndpoint", "topicFilter", "concurrency", "engineType", "discoverPods",
                       "podDiscoveryConfig"})
        self.zmq_endpoint = ev.get("zmqEndpoint", "tcp://*:5557")
        self.topic_filter = ev.get("topicFilter", "kv@")
        engine = ev.get("engineType") or "vllm"
        if engine != "vllm":
            raise params_error(t, f"kvEventsConfig.engineType {engine!r} is not supported here: only vLLM's KV "
                                  f"events are read")
        self.discover_pods = need_bool(t, "kvEventsConfig.discoverPods", ev.get("discoverPods", False))
        pd = _section(t, "kvEventsConfig.podDiscoveryConfig", ev.get("podDiscoveryConfig"),
                      {"podLabelSelector", "podNamespace", "socketPort", "replaySocketPort", "replayPort"})
        self.pod_port = need_int(t, "podDiscoveryConfig.socketPort", pd.get("socketPort") or 5557, 1)
        # replayPort: this EPP's older name of replaySocketPort
        self.replay_port = need_int(t, "podDiscoveryConfig.replaySocketPort",
                                    pd.get("replaySocketPort", pd.get("replayPort", 0)), -(1 << 31))
        self.replay_port = max(0, self.replay_port)
        idx = _section(t, "indexerConfig", indexerConfig,
                       {"kvBlockIndexConfig", "kvCacheBackendConfigs", "tokenizersPoolConfig"})
        if idx.get("tokenizersPoolConfig") is not None:
            # as upstream: this producer reads tokens from a token-producer; it never tokenizes itself
            raise params_error(t, "indexerConfig.tokenizersPoolConfig is not supported; configure a token-producer "
                                  "plugin instead")
        kvb = _section(t, "indexerConfig.kvBlockIndexConfig", idx.get("kvBlockIndexConfig"),
                       {"inMemoryConfig", "redisConfig", "costAwareMemoryConfig", "enableMetrics",
                        "metricsLoggingInterval"})
        for other in ("redisConfig", "costAwareMemoryConfig"):
            if kvb.get(other) is not None:
                raise params_error(t, f"indexerConfig.kvBlockIndexConfig.{other} is not supported here: the index is "
                                      f"in memory (inMemoryConfig)")
        mem = _section(t, "kvBlockIndexConfig.inMemoryConfig", kvb.get("inMemoryConfig"), {"size", "podCacheSize"})
        # ~330 bytes per key here: 2M keys (~650 MB) hold a 64-pod pool of 8B-on-H100 GPU caches
        self.max_keys = need_int(t, "inMemoryConfig.size", mem.get("size", 2_000_000), 1)
        self.speculative = need_bool(t, "speculativeIndexing", speculativeIndexing)
        self.speculative_ttl = need_duration(t, "speculativeTTL", speculativeTTL)
        backends = idx.get("kvCacheBackendConfigs")
        if backends is not None:
            if tierWeights is not None:
                raise params_error(t, "set tier weights once: indexerConfig.kvCacheBackendConfigs or tierWeights")
            if not isinstance(backends, list) or not all(isinstance(b, dict) and set(b) <= {"name", "weight"}
                                                         for b in backends):
                raise params_error(t, "indexerConfig.kvCacheBackendConfigs must be a list of {name, weight}")
            tierWeights = {str(b.get("name", "")): b.get("weight", 0) for b in backends}
        weights = tierWeights if tierWeights is not None else {"GPU": 1.0, "CPU": 0.8}
        if not isinstance(weights, dict) or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in weights.values()):
            raise params_error(t, "tierWeights must map tier names (GPU, CPU, ...) to weights in [0, 1]")
        self.tier_weights = {str(k).upper(): float(v) for k, v in weights.items()}
        self.max_blocks = need_int(t, "maxPrefixBlocksToMatch", maxPrefixBlocksToMatch, 0)
        self.token_producer_name = tokenProducerName
        self.tokens: TokenProducer | None = None
        from ...kvcache.precise_index import PreciseIndex
        self.index = PreciseIndex(block_size=self.block_size, max_keys=self.max_keys, tier_weights=self.tier_weights,
                                  speculative_ttl=self.speculative_ttl, hash_seed=self.hash_seed)
        self.fallback = ApproxPrefixCacheProducer(name=f"{self.name}/approximate")
        self.subscriber = None
        self._state_key = f"prefix/{self.name}"
        self._checked = 0
        self._fallbacks, self._next_fallback_log = 0, 0.0
        self.mismatches = 0
        self.lookups = self.hit_blocks = self.total_blocks = 0

    # ------------------------------------------------------------------ config

    def bind(self, plugins: dict) -> None:
        if self.token_producer_name:
            p = plugins.get(self.token_producer_name)
            if not isinstance(p, TokenProducer):
                raise ValueError(f"tokenProducerName {self.token_producer_name!r} names no token-producer")
            self.tokens = p
        else:
            self.tokens = next((p for p in plugins.values() if isinstance(p, TokenProducer) and p.real), None)
        if self.tokens is None or not self.tokens.real:
            log.warning("%s: no token-producer with the model's tokenizer is configured: every request is scored "
                        "approximately (configure token-producer with local: {path: DIR})", self.name)
        self.fallback.bind(plugins)

    def sub_plugins(self) -> list:
        return [self.fallback]

    # ------------------------------------------------------------------ request path

    def _fell_back(self, reason: str) -> None:
        """Counted every time, logged at most once a minute (with the count since the last line)."""
        FALLBACKS.labels(reason).inc()
        self._fallbacks += 1
        t = time.monotonic()
        if t >= self._next_fallback_log:
            log.warning("%s: %d request(s) scored approximately since the last report (%s); see "
                        "epp_precise_prefix_fallback_total", self.name, self._fallbacks, reason)
            self._fallbacks = 0
            self._next_fallback_log = t + 60.0

    def match_info(self, state, request) -> MatchInfo:
        info = state.get(self._state_key)
        if info is not None:
            return info
        ids = None
        if self.tokens is not None and self.tokens.real:
            limit = self.max_blocks * self.block_size if self.max_blocks else 0
            ids = self.tokens.tokens(state, request, limit)
            if ids is None:
                self._fell_back("tokenization_failed")
        else:
            self._fell_back("no_tokenizer")
        if ids is None:
            info = self.fallback.match_info(state, request)
            state[self._state_key] = info
            return info
        keys = self.index.request_keys(ids, model=request.target_model, max_blocks=self.max_blocks)
        res = self.index.match(keys, now=time.monotonic()) if keys else {}
        info = MatchInfo(keys, {pod: m.weighted for pod, m in res.items()}, self.block_size,
                         blocks={pod: m.blocks for pod, m in res.items()})
        state[self._state_key] = info
        return info

    def pre_request(self, state, request, result):
        info = state.get(self._state_key)
        if info is None or not info.keys or not result.targets:
            return None
        primary = result.targets[0]
        self.lookups += 1
        self.hit_blocks += (info.blocks or {}).get(primary.address, 0)
        self.total_blocks += len(info.keys)
        if info.blocks is None:      # a fallback decision: the approximate producer records it
            return None
        held = result.prefill_target() or primary   # the pod that computes the prompt
        state[PREDICTION] = CachePrediction(self.type_name, self.name, held.address, info.cached_tokens(held.address))
        chosen = result.chosen()
        if self.speculative:
            now = time.monotonic()
            defer = state.get(DEFER)
            for ep in chosen:
                if defer is not None:
                    defer(self.index.add_speculative, ep.address, info.keys, now)
                else:
                    self.index.add_speculative(ep.address, info.keys, now)
        return None

    def endpoints_removed(self, addresses: list[str]) -> None:
        for a in addresses:
            self.index.clear_pod(a)
            if self.subscriber is not None and self.discover_pods:
                self.subscriber.remove_endpoint(a)
        self.fallback.endpoints_removed(addresses)

    # ------------------------------------------------------------------ KV events (background)

    def apply(self, address: str, model: str, batch) -> None:
        from ...datalayer.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
        for ev in batch.events:
            if isinstance(ev, BlockStored):
                self.index.apply_stored(address, ev.block_hashes, ev.parent_block_hash, ev.token_ids, ev.block_size,
                                        ev.medium, model=model)
            elif isinstance(ev, BlockRemoved):
                self.index.apply_removed(address, ev.block_hashes, ev.medium)
            elif isinstance(ev, AllBlocksCleared):
                self.index.clear_pod(address)

    def reset(self, address: str) -> None:
        self.index.clear_pod(address)

    async def run_background(self, store) -> None:
        """Consume KV events until cancelled: bind the central socket, or follow the pool's endpoints."""
        from ...datalayer.kv_events import KVEventSubscriber
        bind = None if self.discover_pods else self.zmq_endpoint
        self.subscriber = sub = KVEventSubscriber(self, bind=bind, topic_filter=self.topic_filter)
        if self.discover_pods:
            def follow(added, removed):
                for ep in added:
                    sub.add_endpoint(ep.address, f"tcp://{host_port(ep.ip, self.pod_port)}",
                                     f"tcp://{host_port(ep.ip, self.replay_port)}" if self.replay_port else None)
                for ep in removed:
                    sub.remove_endpoint(ep.address)
            store.on_change(follow)
            follow(list(store.snapshot()), [])
        _Collector.track(self)
        sub.start()
        log.info("%s: consuming KV events %s", self.name,
                 f"from each endpoint's port {self.pod_port}" if self.discover_pods else f"on {self.zmq_endpoint}")
        try:
            await asyncio.Event().wait()
        finally:
            _Collector.live.discard(self)
            await sub.stop()

    # ------------------------------------------------------------------ introspection

    def kv_event_status(self) -> dict:
        return self.subscriber.status() if self.subscriber is not None else {}

    def dump_state(self) -> dict:
        """Upstream's shape (subscribers, speculative indexing, block size) plus the index's counts; the
        index itself is keyed by prompt-derived hashes and is not listed."""
        sub = self.subscriber
        heard = sorted(a for a, s in sub.status().items() if s["messages"]) if sub is not None else []
        stats = self.index.stats()
        return {"subscribers": heard[:MAX_DUMP_SUBSCRIBERS], "totalSubscribers": len(heard),
                "maxSubscribers": MAX_DUMP_SUBSCRIBERS, "speculativeIndexing": self.speculative,
                "totalSpeculativeEntries": stats["speculative_keys"], "blockSizeTokens": self.block_size,
                "index": stats, "tokenizerMismatches": self.mismatches}

    # ------------------------------------------------------------------ response side

    def response_complete(self, request, result, status, usage=None) -> None:
        """A model server that counts other prompt tokens than we do tokenizes differently: every
        block key differs and precise scores stay zero. Checked on one answer in CHECK_EVERY (the
        rest of a long prompt is tokenized then, off the request path), counted and logged."""
        if usage is None or not usage.seen or not usage.prompt_tokens or self.tokens is None:
            return
        self._checked += 1
        if self._checked % CHECK_EVERY != 1:
            return
        ours = self.tokens.complete_count(request)
        if ours is None or ours == usage.prompt_tokens:
            return
        TOKEN_MISMATCH.inc()
        self.mismatches += 1
        if self.mismatches in (1, 10, 100) or self.mismatches % 1000 == 0:
            log.warning("%s: epp counts %d prompt tokens, the model server %d (request %s): the token-producer's "
                        "tokenizer or chat template does not match the served model", self.name, ours,
                        usage.prompt_tokens, request.request_id)


class _Collector(LiveCollector):
    """KV-event ingestion and index state of every running producer, read at scrape time (no
    per-event metric updates). One collector for all of them: metric names are registered once."""

    def collect(self):
        labels = ["plugin_name"]
        events = CounterMetricFamily("epp_kv_events", "KV-event messages and what became of them "
                                     "(messages, gaps, replays, resets, decode_errors, ...).", labels=labels + ["what"])
        entries = GaugeMetricFamily("epp_precise_prefix_index_entries", "Blocks in the precise prefix index.",
                                    labels=labels)
        skipped = CounterMetricFamily("epp_precise_prefix_index_skipped_events",
                                      "Stored blocks the index could not place, by reason.", labels=labels + ["reason"])
        publishers = GaugeMetricFamily("epp_kv_event_publishers",
                                       "Endpoints whose KV events have reached this epp.", labels=labels)
        for p in list(self.live):
            if p.subscriber is not None:
                for what, n in p.subscriber.counters.as_dict().items():
                    events.add_metric([p.name, what], n)
                publishers.add_metric([p.name], p.subscriber.publishers())
            stats = p.index.stats()
            entries.add_metric([p.name], stats["entries"])
            for reason in ("unplaceable", "mismatches", "malformed"):
                skipped.add_metric([p.name, reason], stats[reason])
        yield events
        yield publishers
        yield entries
        yield skipped
