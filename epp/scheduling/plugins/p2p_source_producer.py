"""p2p-source-producer (Alpha): names, in x-kv-cache-source-host-port, a peer that already holds most of
the prompt's prefix, so the routing sidecar can pull those KV blocks (vLLM's P2P offloading tier)
instead of recomputing them.

The source is drawn among the candidates caching within one block of the most cached tokens, each
weighted by 1 / (1 + its waiting queue), with a hash of the request id as the draw (so retries agree).
The header is set only when that peer holds at least minCachedTokenDelta (1) tokens more than the pod
that computes the prefill: the prefillProfileName (prefill) profile's pick when it ran, else the
primary pick. The match comes from
prefixMatchInfoProducerName (the approximate producer by default). Per-tier matches are not kept
here, so blocks count whatever tier holds them (upstream counts CPU-tier blocks only).
"""
from __future__ import annotations

import xxhash

from ...headers import KV_CACHE_SOURCE
from ..framework import (ALPHA, BindsPlugins, Plugin, PrefixMatchConsumer, PreRequest, need_int, need_str,
                         register)
from .approx_prefix_cache_producer import find_prefix_producer


@register
class P2PSourceProducer(Plugin, PreRequest, BindsPlugins, PrefixMatchConsumer):
    type_name = "p2p-source-producer"
    stability = ALPHA

    def __init__(self, name: str | None = None, prefixMatchInfoProducerName: str = "", minCachedTokenDelta: int = 1,
                 prefillProfileName: str = "prefill") -> None:
        super().__init__(name)
        t = self.type_name
        self.producer_name = prefixMatchInfoProducerName
        self.min_delta = need_int(t, "minCachedTokenDelta", minCachedTokenDelta, 1)
        self.prefill_profile = need_str(t, "prefillProfileName", prefillProfileName) or "prefill"
        self.producer = None

    def wants_default_producer(self) -> bool:
        return not self.producer_name

    def match_producer(self):
        return self.producer

    def bind(self, plugins: dict) -> None:
        self.producer = find_prefix_producer(plugins, self.producer_name)

    def pre_request(self, state, request, result):
        if self.producer is None:
            return None
        info = self.producer.match_info(state, request)
        if not info.keys:
            return None
        prefill = result.profiles.get(self.prefill_profile)
        computing = prefill.targets[0] if prefill is not None and prefill.targets else \
            (result.targets[0] if result.targets else None)
        if computing is None:
            return None
        seen, candidates = set(), []
        for pr in result.profiles.values():
            for ep in pr.candidates or ():
                if ep.address not in seen:
                    seen.add(ep.address)
                    candidates.append(ep)
        best = max((info.cached_tokens(ep.address) for ep in candidates), default=0)
        if best <= 0:
            return None
        band = [ep for ep in candidates if info.cached_tokens(ep.address) >= best - info.block_tokens]
        weights = [1.0 / (1.0 + max(0.0, ep.metrics.waiting)) for ep in band]
        draw = xxhash.xxh64_intdigest(request.request_id.encode()) / 2.0 ** 64 * sum(weights)
        source = band[-1]
        for ep, w in zip(band, weights):
            draw -= w
            if draw < 0:
                source = ep
                break
        if source is computing or \
                info.cached_tokens(source.address) - info.cached_tokens(computing.address) < self.min_delta:
            return None
        return [(KV_CACHE_SOURCE, source.address)]
