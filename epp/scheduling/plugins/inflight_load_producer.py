"""inflight-load-producer: the requests and estimated tokens this EPP has in flight to each endpoint.

A request counts on every endpoint it was sent to (the pick and, with P/D, the prefill pod) from the
moment it is scheduled (pre-request) until its stream ends, answered, failed or cancelled. Its tokens
are the prompt's (4 bytes per token unless a token-producer tokenized it); a streamed request frees
them when its answer starts (prefill is done), any other when it ends. With
addEstimatedOutputTokens the estimate adds round(prompt x outputRatio) output tokens, capped by the
request's own max_tokens and by maxEstimatedOutputTokens, freed when the request ends.
concurrency-detector reads it (and upstream's load-aware scorers).

Minimal against upstream: no prefix-cache discount of the prompt tokens (prefixMatchInfoProducerName
is accepted) and no cross-replica sync (syncCrossReplicaState is accepted)."""
from __future__ import annotations

from ..framework import (EndpointLifecycle, InFlightLoadProducer, Plugin, PreRequest, ResponseComplete,
                         ResponseHeaders, need_bool, need_int, need_number, params_error, register)

_MAX_TOKEN_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


class _Held:
    __slots__ = ("addresses", "prompt", "output")

    def __init__(self, addresses: list[str], prompt: int, output: int) -> None:
        self.addresses = addresses
        self.prompt = prompt   # tokens freed when a streamed answer starts, else at the end
        self.output = output   # estimated output tokens, freed at the end


@register
class InflightLoadProducer(Plugin, InFlightLoadProducer, PreRequest, ResponseHeaders, ResponseComplete,
                           EndpointLifecycle):
    type_name = "inflight-load-producer"

    def __init__(self, name: str | None = None, addEstimatedOutputTokens: bool = False, outputRatio: float = 1.5,
                 maxEstimatedOutputTokens: int | None = None, prefixMatchInfoProducerName: str = "",
                 syncCrossReplicaState: bool = True) -> None:
        super().__init__(name)
        t = self.type_name
        self.add_output = need_bool(t, "addEstimatedOutputTokens", addEstimatedOutputTokens)
        self.ratio = need_number(t, "outputRatio", outputRatio)
        if self.ratio < 0:
            raise params_error(t, f"outputRatio must be non-negative, got {outputRatio}")
        self.max_output = (None if maxEstimatedOutputTokens is None
                           else need_int(t, "maxEstimatedOutputTokens", maxEstimatedOutputTokens, 0))
        need_bool(t, "syncCrossReplicaState", syncCrossReplicaState)
        self.requests: dict[str, int] = {}
        self.tokens: dict[str, int] = {}
        self._held: dict[int, tuple[object, _Held]] = {}   # id(request) -> (request, what it holds)

    def inflight_load(self, address: str) -> tuple[int, int]:
        return self.requests.get(address, 0), self.tokens.get(address, 0)

    def _estimate(self, request) -> tuple[int, int]:
        ids = request.tokenization[0] if request.tokenization else None
        prompt = len(ids) if ids and not request.tokenization[1] else (len(request.prompt) + 3) // 4
        if not self.add_output or prompt <= 0:
            return prompt, 0
        out = round(prompt * self.ratio)
        body = request.body or {}
        for k in _MAX_TOKEN_KEYS:
            v = body.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < out:
                out = v
                break
        if self.max_output is not None and self.max_output < out:
            out = self.max_output
        return prompt, out

    def pre_request(self, state, request, result):
        addresses = [ep.address for ep in result.chosen()]
        if not addresses:
            return None
        prompt, output = self._estimate(request)
        reqs, toks = self.requests, self.tokens
        for a in addresses:
            reqs[a] = reqs.get(a, 0) + 1
            toks[a] = toks.get(a, 0) + prompt + output
        self._held[id(request)] = (request, _Held(addresses, prompt, output))
        return None

    def _free(self, held: _Held, tokens: int, requests: int) -> None:
        reqs, toks = self.requests, self.tokens
        for a in held.addresses:
            if a in toks:
                toks[a] = max(0, toks[a] - tokens)
            if requests and a in reqs:
                reqs[a] = max(0, reqs[a] - requests)

    def response_headers(self, request, result, status):
        entry = self._held.get(id(request))
        if entry is not None and request.stream and entry[1].prompt:
            held = entry[1]
            self._free(held, held.prompt, 0)
            held.prompt = 0
        return None

    def response_complete(self, request, result, status, usage=None):
        entry = self._held.pop(id(request), None)
        if entry is not None:
            held = entry[1]
            self._free(held, held.prompt + held.output, 1)

    def endpoints_removed(self, addresses):
        for a in addresses:
            self.requests.pop(a, None)
            self.tokens.pop(a, None)
