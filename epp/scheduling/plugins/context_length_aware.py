"""context-length-aware: endpoints labelled with the prompt lengths they are sized for
("llm-d.ai/context-length-range: 0-8192"). As a scorer: inside the range scores 0.3-1.0 (narrower
ranges and more headroom score higher), outside 0.3 / (1 + distance/1000), unlabeled 0.5, an
unreadable label 0. As a filter (enableFiltering): drops endpoints whose range excludes the prompt
or whose label is unreadable; unlabeled ones stay. The length is the prompt's token count (the
token-producer's when configured, else bytes / 4)."""
from __future__ import annotations

from ..framework import BindsPlugins, Filter, Scorer, need_bool, need_str, register
from .token_producer import TokenProducer


def parse_range(value: str) -> tuple[int, int] | None:
    lo, sep, hi = value.partition("-")
    try:
        lo_i, hi_i = int(lo), int(hi)
    except ValueError:
        return None
    if not sep or lo_i < 0 or hi_i < lo_i:
        return None
    return lo_i, hi_i


@register
class ContextLengthAware(Filter, Scorer, BindsPlugins):
    type_name = "context-length-aware"
    bounded = True

    def __init__(self, name: str | None = None, label: str = "llm-d.ai/context-length-range",
                 enableFiltering: bool = False) -> None:
        super().__init__(name)
        self.label = need_str(self.type_name, "label", label)
        self.filtering = need_bool(self.type_name, "enableFiltering", enableFiltering)
        self.tokens: TokenProducer | None = None

    def bind(self, plugins: dict) -> None:
        self.tokens = next((p for p in plugins.values() if isinstance(p, TokenProducer)), None)

    def _length(self, state, request) -> int:
        if self.tokens is not None:
            return self.tokens.token_count(state, request)
        return (len(request.prompt) + 3) // 4

    def filter(self, state, request, endpoints):
        if not self.filtering:
            return list(endpoints)
        n = self._length(state, request)
        out = []
        for ep in endpoints:
            v = ep.labels.get(self.label)
            if v is None:
                out.append(ep)
                continue
            r = parse_range(v)
            if r is not None and r[0] <= n <= r[1]:
                out.append(ep)
        return out

    def score(self, state, request, endpoints):
        n = self._length(state, request)
        out = []
        for ep in endpoints:
            v = ep.labels.get(self.label)
            if v is None:
                out.append(0.5)
                continue
            r = parse_range(v)
            if r is None:
                out.append(0.0)
                continue
            lo, hi = r
            if lo <= n <= hi:
                width = hi - lo
                out.append(1.0 if width == 0 else 0.3 + 0.7 * (0.7 / (1 + width / 10000) + 0.3 * (hi - n) / width))
            else:
                distance = lo - n if n < lo else n - hi
                out.append(0.3 / (1 + distance / 1000))
        return out
