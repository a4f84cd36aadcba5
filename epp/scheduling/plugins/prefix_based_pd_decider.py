"""prefix-based-pd-decider: a separate prefill when the part of the prompt the chosen decode pod does
not already cache is long enough to be worth moving.

    disaggregate  iff  nonCachedTokens > 0
                  and  prompt tokens >= max(nonCachedTokens, promptTokens)
                  and  prompt tokens - tokens cached on the decode pod >= nonCachedTokens

Cached tokens come from the prefix-match producer the decode profile's prefix scorer reads (the
precise one when it is configured so, whole blocks whatever their tier), so the decision costs no
second lookup; without a prefix scorer in the decode profile, the configured producer (precise
first), else one of its own that records the decode picks. Prompt tokens come from the
token-producer when one is configured (tokenized only as far as the decision needs), else ~4 bytes
per token.
"""
from __future__ import annotations

from ..framework import BindsPlugins, HasSubPlugins, PrefixMatchConsumer, PrefixMatchProducer, need_int, register
from ._disagg import ALREADY_CACHED, BELOW_THRESHOLD, DISABLED, UNCACHED, PDDecider
from .approx_prefix_cache_producer import ApproxPrefixCacheProducer, find_prefix_producer
from .precise_prefix_cache_producer import PrecisePrefixCacheProducer
from .token_producer import TokenProducer


@register
class PrefixBasedPDDecider(PDDecider, BindsPlugins):
    type_name = "prefix-based-pd-decider"

    def __init__(self, name: str | None = None, nonCachedTokens: int = 0, promptTokens: int = 0) -> None:
        super().__init__(name)
        self.non_cached = need_int(self.type_name, "nonCachedTokens", nonCachedTokens, 0)
        self.prompt_min = need_int(self.type_name, "promptTokens", promptTokens, 0)
        self.tokens: TokenProducer | None = None
        self.producer = None
        self._own = None
        self._plugins: dict = {}

    def bind(self, plugins: dict) -> None:
        self._plugins = plugins
        found = [p for p in plugins.values() if isinstance(p, TokenProducer)]
        self.tokens = next((p for p in found if p.real), found[0] if found else None)

    def attach(self, decode_profile, producer=None) -> None:
        if producer is None and decode_profile is not None:
            producer = next((p for ws in decode_profile.scorers if isinstance(ws.scorer, PrefixMatchConsumer)
                             and isinstance(p := ws.scorer.match_producer(), PrefixMatchProducer)), None)
        if producer is None:
            producer = self._configured_producer()
        if producer is None:
            if self._own is None:
                self._own = ApproxPrefixCacheProducer(name=f"{self.name}/producer")
                self._own.bind(self._plugins)
            producer = self._own
        self.producer = producer

    def _configured_producer(self):
        plugins = self._plugins
        subs = [s for p in plugins.values() if isinstance(p, HasSubPlugins) for s in p.sub_plugins()]
        precise = [p for p in (*plugins.values(), *subs) if isinstance(p, PrecisePrefixCacheProducer)]
        return precise[0] if precise else find_prefix_producer(plugins, "")

    def sub_plugins(self) -> list:
        return [self._own] if self._own is not None else []

    def decide(self, state, request, endpoint):
        n = self.non_cached
        if not n:
            return False, DISABLED, "nonCachedTokens is 0"
        need = max(n, self.prompt_min)
        if self.producer is None:
            self.attach(None)
        cached = self.producer.match_info(state, request).cached_tokens(endpoint.address)
        # tokenize only as far as the comparisons need: a prompt at least this long disaggregates
        enough = max(need, cached + n)
        ids = self.tokens.tokens(state, request, enough) if self.tokens is not None else None
        prompt = len(ids) if ids is not None else (len(request.prompt) + 3) // 4
        if prompt < need:
            gate = "nonCachedTokens" if prompt < n else "promptTokens"
            return False, BELOW_THRESHOLD, f"prompt {prompt} tokens < {gate} {need}"
        uncached = prompt - cached
        at_least = "+" if ids is not None and prompt >= enough else ""  # tokenized no further than needed
        what = f"prompt {prompt}{at_least} tokens, {cached} cached on {endpoint.address}: {uncached}{at_least} uncached"
        if uncached < n:
            return False, ALREADY_CACHED, f"{what} < nonCachedTokens {n}"
        return True, UNCACHED, f"{what} >= nonCachedTokens {n}"
