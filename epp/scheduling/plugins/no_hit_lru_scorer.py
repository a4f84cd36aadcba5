"""no-hit-lru-scorer: spreads cold prefixes. When no candidate holds any of the request's prefix,
endpoints never given a cold request score highest (1 - i/(n-1) in candidate order), then the least
recently used ones; warm requests get 0.5 everywhere, leaving them to the prefix scorer. The picks
of cold requests (primary and "prefill" profile) become most recently used."""
from __future__ import annotations

from collections import OrderedDict

from ..framework import (BindsPlugins, EndpointLifecycle, PrefixMatchConsumer, PreRequest, Scorer, StateDumper,
                         need_int, register)
from .approx_prefix_cache_producer import ApproxPrefixCacheProducer, find_prefix_producer

STATE_COLD = "no-hit-lru/cold"
MAX_DUMP_ENDPOINTS = 100   # upstream's cap on the debug dump


@register
class NoHitLRUScorer(Scorer, PreRequest, EndpointLifecycle, BindsPlugins, PrefixMatchConsumer, StateDumper):
    type_name = "no-hit-lru-scorer"
    bounded = True

    def __init__(self, name: str | None = None, lruSize: int = 1024, prefixMatchInfoProducerName: str = "") -> None:
        super().__init__(name)
        self.size = need_int(self.type_name, "lruSize", lruSize, 1)
        self.producer_name = prefixMatchInfoProducerName
        self.producer = None
        self._lru: OrderedDict[str, None] = OrderedDict()   # least recently used first

    def bind(self, plugins: dict) -> None:
        self.producer = find_prefix_producer(plugins, self.producer_name)

    def match_producer(self):
        return self.producer

    def wants_default_producer(self) -> bool:
        return not self.producer_name

    def score(self, state, request, endpoints):
        if self.producer is None:  # built in code without a config
            self.producer = ApproxPrefixCacheProducer()
        info = self.producer.match_info(state, request)
        cold = not any(info.matched.get(ep.address) for ep in endpoints)
        state[STATE_COLD] = cold
        n = len(endpoints)
        if not cold:
            return [0.5] * n
        if n == 1:
            return [1.0]
        lru = self._lru
        fresh = [i for i, ep in enumerate(endpoints) if ep.address not in lru]
        out = [0.0] * n
        for rank, i in enumerate(fresh):
            out[i] = 1.0 - rank / (n - 1)
        pos = {a: k for k, a in enumerate(lru)}
        used = sorted((pos[ep.address], i) for i, ep in enumerate(endpoints) if ep.address in pos)
        for rank, (_, i) in enumerate(used):
            out[i] = max(0.0, 1.0 - (len(fresh) + rank) / (n - 1))
        return out

    def pre_request(self, state, request, result):
        if not state.get(STATE_COLD):
            return None
        for ep in result.chosen():
            self._lru.pop(ep.address, None)
            self._lru[ep.address] = None
        while len(self._lru) > self.size:
            self._lru.popitem(last=False)
        return None

    def endpoints_removed(self, addresses):
        for a in addresses:
            self._lru.pop(a, None)

    def dump_state(self) -> dict:
        """Upstream's shape: the endpoints in the cold-request LRU, least recently used first, capped."""
        keys = list(self._lru)
        return {"endpoints": keys[:MAX_DUMP_ENDPOINTS], "totalEndpoints": len(keys), "maxEndpoints": MAX_DUMP_ENDPOINTS}
