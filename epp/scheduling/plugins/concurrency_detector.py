"""concurrency-detector: saturation from the requests (or tokens) this EPP has in flight, read from an
inflight-load-producer (inFlightLoadProducerName; the loader adds the default one when unnamed).

concurrencyMode `requests`: saturation = total in-flight requests / (endpoints x maxConcurrency);
`tokens`: the same with tokens and maxTokenConcurrency; `hybrid`: the mean over endpoints of
max(requests / maxConcurrency, tokens / maxTokenConcurrency). An empty pool reads 1.0 (fail closed).
As a filter it keeps the endpoints below their limit x (1 + headroom) in the mode's dimension(s);
unlike the utilization detector it may drop them all. The counts move with every dispatch and
completion, so flow control gates exactly, with no scrape lag."""
from __future__ import annotations

import logging

from ..framework import (BindsPlugins, Filter, InFlightLoad, InFlightLoadConsumer, SaturationDetector, need_int,
                         need_number, need_str, params_error, register)
from .inflight_load_producer import find_inflight

log = logging.getLogger(__name__)


@register
class ConcurrencyDetector(Filter, SaturationDetector, BindsPlugins, InFlightLoadConsumer):
    type_name = "concurrency-detector"

    def __init__(self, name: str | None = None, concurrencyMode: str = "requests", maxConcurrency: int = 100,
                 maxTokenConcurrency: int = 1000000, headroom: float = 0.0, inFlightLoadProducerName: str = "") -> None:
        super().__init__(name)
        t = self.type_name
        self.mode = need_str(t, "concurrencyMode", concurrencyMode, ("requests", "tokens", "hybrid"))
        self.max_requests = need_int(t, "maxConcurrency", maxConcurrency, 0)
        self.max_tokens = need_int(t, "maxTokenConcurrency", maxTokenConcurrency, 0)
        if self.max_requests <= 0:
            raise params_error(t, f"maxConcurrency must be strictly positive, got {maxConcurrency}")
        if self.max_tokens <= 0:
            raise params_error(t, f"maxTokenConcurrency must be strictly positive, got {maxTokenConcurrency}")
        self.headroom = need_number(t, "headroom", headroom)
        if self.headroom < 0:
            raise params_error(t, f"headroom must be a non-negative value, got {headroom}")
        if self.headroom > 1.0:
            log.info("%s: headroom %g is unusually high; it is a fraction (0.2 = 20%%)", t, self.headroom)
        self.producer_name = inFlightLoadProducerName
        self.producer: InFlightLoad | None = None

    def wants_inflight_load(self) -> bool:
        return not self.producer_name

    def bind(self, plugins) -> None:
        self.producer = find_inflight(plugins, self.producer_name)

    def _load(self, ep) -> tuple[int, int]:
        p = self.producer
        return p.load(ep.address) if p is not None else (ep.in_flight, ep.in_flight_tokens)

    def saturation(self, endpoints) -> float:
        n = len(endpoints)
        if not n:
            return 1.0
        mr, mt = self.max_requests, self.max_tokens
        if self.mode == "hybrid":
            total = 0.0
            for ep in endpoints:
                r, tk = self._load(ep)
                total += max(r / mr, tk / mt)
            return total / n
        i = 0 if self.mode == "requests" else 1
        return sum(self._load(ep)[i] for ep in endpoints) / (n * (mr if i == 0 else mt))

    def filter(self, state, request, endpoints):
        req_limit = int(self.max_requests * (1.0 + self.headroom))
        tok_limit = int(self.max_tokens * (1.0 + self.headroom))
        mode = self.mode
        out = []
        for ep in endpoints:
            r, tk = self._load(ep)
            if mode == "requests":
                ok = r < req_limit
            elif mode == "tokens":
                ok = tk < tok_limit
            else:
                ok = r < req_limit and tk < tok_limit
            if ok:
                out.append(ep)
        return out
