"""inflight-load-producer: per endpoint, the requests and prompt tokens this EPP has sent and not yet
seen finish, for token-load-scorer, active-request-scorer, utilization-filter (active-requests),
prefix-cache-affinity-filter's load gate and the concurrency detector.

When a request is sent, each profile's pick gets +1 request and the request's *uncached* prompt
tokens on it: (blocks of the prompt the pick does not hold) x block size, plus any tail beyond the
hashed blocks, from prefixMatchInfoProducerName's match (the approximate producer by default; the
full prompt when there is none). With addEstimatedOutputTokens, also an output estimate:
min(round(prompt tokens x outputRatio), the client's max_tokens / max_completion_tokens /
max_output_tokens, maxEstimatedOutputTokens). Release, as upstream's: at the first body chunk of a
streamed answer (the first token: prefill is over) a prefill-profile pick entirely and, without the
output estimate, the other picks' tokens; everything else when the response ends or the stream is
cancelled. Not at the response headers: vLLM writes those as soon as it accepts the request, before
any prefill, so counting from them would leave the tokens of every queued prompt uncounted (with
response headers only sent to the EPP, the tokens stay until the end). Counts of an endpoint that
left the pool are dropped. Gauges llm_d_epp_inflight_requests / _inflight_tokens.
syncCrossReplicaState is accepted: llm-d v0.10 has no cross-replica syncer to share counts with.
"""
from __future__ import annotations

from prometheus_client import Gauge

from ...headers import FAIRNESS_ID, FAIRNESS_ID_OLD
from ...metrics import capped_fairness_id
from ..framework import (BindsPlugins, EndpointLifecycle, InFlightLoad, Plugin, PrefixMatchProducer, PreRequest,
                         ResponseComplete, ResponseFirstChunk, TokenizedPromptConsumer, need_bool, need_int,
                         need_number, register)
from .approx_prefix_cache_producer import find_prefix_producer
from .token_producer import TokenProducer

INFLIGHT_REQUESTS = Gauge("llm_d_epp_inflight_requests", "In-flight requests per endpoint, as the EPP counts them.",
                          ["endpoint_name", "namespace", "producer_name", "fairness_id", "priority"])
INFLIGHT_TOKENS = Gauge("llm_d_epp_inflight_tokens", "In-flight (uncached prompt) tokens per endpoint, as the EPP "
                        "counts them.", ["endpoint_name", "namespace", "producer_name", "fairness_id", "priority"])
PREFILL = "prefill"
DEFAULT_FAIRNESS_ID = "default-flow"
_INPUT = "inflight/input-tokens"


class _Entry:
    """What one request added on one endpoint, until released."""

    __slots__ = ("profile", "address", "tokens", "requests", "children")

    def __init__(self, profile: str, address: str, tokens: int, children) -> None:
        self.profile, self.address, self.tokens, self.requests, self.children = profile, address, tokens, 1, children


@register
class InFlightLoadProducer(Plugin, InFlightLoad, PreRequest, ResponseFirstChunk, ResponseComplete, EndpointLifecycle,
                           BindsPlugins, TokenizedPromptConsumer):
    type_name = "inflight-load-producer"

    def __init__(self, name: str | None = None, addEstimatedOutputTokens: bool = False, outputRatio: float = 1.5,
                 maxEstimatedOutputTokens: int | None = None, prefixMatchInfoProducerName: str = "",
                 syncCrossReplicaState: bool = True) -> None:
        super().__init__(name)
        t = self.type_name
        self.add_output = need_bool(t, "addEstimatedOutputTokens", addEstimatedOutputTokens)
        self.output_ratio = need_number(t, "outputRatio", outputRatio, 0.0)
        self.max_output = None if maxEstimatedOutputTokens is None else need_int(
            t, "maxEstimatedOutputTokens", maxEstimatedOutputTokens, 0)
        self.producer_name = prefixMatchInfoProducerName
        need_bool(t, "syncCrossReplicaState", syncCrossReplicaState)
        self.prefix: PrefixMatchProducer | None = None
        self.tokens: TokenProducer | None = None
        self._requests: dict[str, int] = {}
        self._tokens: dict[str, int] = {}
        self._key = f"inflight/{self.name}"
        self._children: dict[tuple, tuple] = {}

    def bind(self, plugins: dict) -> None:
        self.prefix = find_prefix_producer(plugins, self.producer_name)
        self.tokens = next((p for p in plugins.values() if isinstance(p, TokenProducer) and p.real), None)

    # ---------------------------------------------------------------- read side

    def load(self, address: str) -> tuple[int, int]:
        return self._requests.get(address, 0), self._tokens.get(address, 0)

    def input_tokens(self, state, request) -> int:
        n = state.get(_INPUT)
        if n is None:
            n = self.tokens.token_count(state, request) if self.tokens is not None else (len(request.prompt) + 3) // 4
            state[_INPUT] = n
        return n

    def uncached_tokens(self, state, request, endpoint) -> int:
        inp = self.input_tokens(state, request)
        uncached = inp
        if self.prefix is not None and inp:
            info = self.prefix.match_info(state, request)
            if info.block_tokens > 0 and info.keys:
                indexed = info.total * info.block_tokens
                uncached = max(0, indexed - info.cached_tokens(endpoint.address)) + max(0, inp - indexed)
        if self.add_output:
            uncached += self._output_estimate(inp, request)
        return uncached

    def _output_estimate(self, inp: int, request) -> int:
        if inp <= 0:
            return 0
        est = int(inp * self.output_ratio + 0.5)
        body = request.body if isinstance(request.body, dict) else {}
        for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            cap = body.get(key)
            if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0:
                est = min(est, cap)
                break
        if self.max_output is not None:
            est = min(est, self.max_output)
        return est

    # ---------------------------------------------------------------- request life

    def _gauges(self, endpoint, request):
        headers = request.headers
        fairness = headers.get(FAIRNESS_ID) or headers.get(FAIRNESS_ID_OLD) or DEFAULT_FAIRNESS_ID
        key = (endpoint.name, endpoint.namespace, capped_fairness_id(fairness), str(request.priority))
        children = self._children.get(key)
        if children is None:
            labels = (key[0], key[1], self.name, key[2], key[3])
            children = self._children[key] = (INFLIGHT_REQUESTS.labels(*labels), INFLIGHT_TOKENS.labels(*labels))
        return children

    def pre_request(self, state, request, result):
        entries = []
        for profile, pr in result.profiles.items():
            if not pr.targets:
                continue
            ep = pr.targets[0]
            tokens = self.uncached_tokens(state, request, ep)
            a = ep.address
            self._requests[a] = self._requests.get(a, 0) + 1
            self._tokens[a] = self._tokens.get(a, 0) + tokens
            children = self._gauges(ep, request)
            children[0].inc()
            children[1].inc(tokens)
            entries.append(_Entry(profile, a, tokens, children))
        if entries:
            if request.attrs is None:
                request.attrs = {}
            request.attrs[self._key] = entries
        return None

    def _release(self, e: _Entry, tokens: bool = True, requests: bool = True) -> None:
        a = e.address
        if tokens and e.tokens:
            left = self._tokens.get(a)
            if left is not None:   # None: the endpoint left the pool, its counts went with it
                self._tokens[a] = max(0, left - e.tokens)
            e.children[1].dec(e.tokens)
            e.tokens = 0
        if requests and e.requests:
            left = self._requests.get(a)
            if left is not None:
                self._requests[a] = max(0, left - 1)
            e.children[0].dec()
            e.requests = 0

    def response_first_chunk(self, request, result, elapsed):
        entries = request.attrs.get(self._key) if request.attrs else None
        for e in entries or ():
            if e.profile == PREFILL:
                self._release(e)                                  # the prefill leg is over
            elif not self.add_output:
                self._release(e, requests=False)                  # prefill is done: its compute is spent

    def response_complete(self, request, result, status, usage=None) -> None:
        entries = request.attrs.pop(self._key, None) if request.attrs else None
        for e in entries or ():
            self._release(e)

    def endpoints_removed(self, addresses: list[str]) -> None:
        for a in addresses:
            self._requests.pop(a, None)
            self._tokens.pop(a, None)


def find_inflight(plugins: dict, name: str):
    """The in-flight load producer a consumer reads: the one it names, else - as upstream's data keys
    work - the default one, named inflight-load-producer (the loader creates it when needed)."""
    p = plugins.get(name or InFlightLoadProducer.type_name)
    if name and not isinstance(p, InFlightLoad):
        raise ValueError(f"inFlightLoadProducerName {name!r} names no in-flight load producer")
    return p if isinstance(p, InFlightLoad) else None
