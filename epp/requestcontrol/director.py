"""Turns one request into a routing decision: parse, admit, pick candidates, schedule, and the
response-side accounting once the answer is through."""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Awaitable, Sequence

import orjson

from ..datalayer.address import canonical
from ..datalayer.endpoint import Endpoint, now
from ..datalayer.store import EndpointStore
from ..headers import OBJECTIVE, REQUEST_ID, REWRITE
from ..metrics import EPPMetrics
from ..scheduling.config import default_saturation_detector
from ..scheduling.framework import SaturationDetector
from ..scheduling.scheduler import Scheduler
from ..scheduling.types import HIT_RATIO, LLMRequest, SchedulingResult
from .errors import EPPError, bad_request
from .interface import Decision, Subset
from .parse import api_for_path, parse_body
from .rewrite import Rewrites
from .usage import UsageReader

log = logging.getLogger(__name__)

_BODY_METHODS = ("POST", "PUT", "PATCH")


def parse_subset(value: Subset) -> list[str] | None:
    """The proxy's subset hint: a list of strings or one comma-separated string; None when absent."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    out = []
    for item in items:
        if isinstance(item, str) and item.strip():
            out.append(item.strip())
    return out


def _subset_filter(endpoints: Sequence[Endpoint], subset: list[str]) -> list[Endpoint]:
    addresses, ips = set(), set()
    for s in subset:
        try:
            addresses.add(canonical(s))
        except ValueError:
            ips.add(s.strip("[]"))  # a bare IP
    return [ep for ep in endpoints if ep.address in addresses or ep.ip in ips]


class Director:
    """Request control: implements the transports' seam (interface.RequestControl)."""

    def __init__(self, store: EndpointStore, scheduler: Scheduler, metrics: EPPMetrics | None = None,
                 staleness: float = 2.0, objectives: dict[str, int] | None = None, explain: bool = False,
                 saturation: SaturationDetector | None = None, rewrites: Rewrites | None = None) -> None:
        self.store = store
        self.scheduler = scheduler
        self.metrics = metrics
        self.staleness = staleness
        self.static_objectives = dict(objectives or {})
        self.objectives = dict(self.static_objectives)
        self.rewrites = rewrites or Rewrites()
        self.explain = explain
        # sheds sheddable requests; upstream's utilization detector with our staleness unless configured
        self.saturation = saturation or default_saturation_detector(staleness)
        self._ids = itertools.count(1)
        self._warned_stale = False
        self._by_model: dict[tuple[str, str], _Series] = {}
        store.on_change(lambda added, removed: scheduler.endpoints_removed([e.address for e in removed]))

    # ---------------------------------------------------------------- request path

    def body_required(self, method: str, path: str) -> bool:
        return method in _BODY_METHODS and bool(api_for_path(path))

    def decide(self, headers: dict[str, str], path: str, raw_body: bytes | None,
               subset: Subset) -> Decision | Awaitable[Decision]:
        """Raises EPPError for anything the client should be told (and counts it). A request whose
        plugins need I/O first (e.g. tokenizing through the model server) gets an awaitable of its
        Decision; every other request is decided at once."""
        try:
            request, new_body = self._request(headers, path, raw_body)
        except EPPError as e:
            self._count_error(e)
            raise
        hint = parse_subset(subset)
        if request.body is not None:
            waits = self.scheduler.prepare(request)
            if waits:
                return self._decide_later(waits, request, new_body, hint)
        return self._counted_schedule(request, new_body, hint)

    def validate_body(self, path: str, body: bytes) -> None:
        api = api_for_path(path)
        if api:
            parse_body(api, body)

    async def _decide_later(self, waits: list, request: LLMRequest, new_body: bytes | None,
                            subset: list[str] | None) -> Decision:
        for r in await asyncio.gather(*waits, return_exceptions=True):
            if isinstance(r, BaseException):   # preparers fall back themselves; a bug must not fail the request
                log.error("prepare step failed for request %s", request.request_id, exc_info=r)
        return self._counted_schedule(request, new_body, subset)

    def _counted_schedule(self, request: LLMRequest, new_body: bytes | None, subset: list[str] | None) -> Decision:
        try:
            decision = self._schedule(request, new_body, subset)
        except EPPError as e:
            self._count_error(e)
            raise
        if self.metrics:
            self._series(decision.request).request_total.inc()
        return decision

    def _count_error(self, e: EPPError) -> None:
        if self.metrics:
            self.metrics.request_error_total.labels(e.model, e.model, str(e.status)).inc()

    def _series(self, req: LLMRequest) -> "_Series":
        key = (req.model, req.target_model)
        s = self._by_model.get(key)
        if s is None:
            s = self._by_model[key] = _Series(self.metrics, *key)
        return s

    def _request(self, headers: dict[str, str], path: str, raw_body: bytes | None) -> tuple[LLMRequest, bytes | None]:
        api = ""
        body, model, prompt, stream, salt = None, "", b"", False, ""
        if raw_body is not None:
            api = api_for_path(path) or ""
            if not api:
                raise bad_request(f"unsupported path {path.split('?', 1)[0]!r} for a request with a body; "
                                  f"supported: /v1/completions, /v1/chat/completions, /v1/responses")
            body, model, prompt, stream, salt = parse_body(api, raw_body)
        target = model
        new_body = None
        if body is not None and model:
            rewritten = headers.get(REWRITE) or self.rewrites.target(model)
            if rewritten and rewritten != model:
                target = rewritten
                body["model"] = rewritten
                new_body = orjson.dumps(body)
        request = LLMRequest(
            request_id=headers.get(REQUEST_ID) or f"epp-{next(self._ids)}",
            model=model, target_model=target, api=api, prompt=prompt, headers=headers, body=body,
            priority=self._priority(headers), cache_salt=salt, stream=stream)
        return request, new_body

    def _schedule(self, request: LLMRequest, new_body: bytes | None, subset: list[str] | None) -> Decision:
        model, target, prompt = request.model, request.target_model, request.prompt
        try:
            candidates = self._candidates(subset)
            if request.priority < 0 and self.saturation.saturation(candidates) >= 1.0:
                raise EPPError(429, "system saturated, sheddable request dropped")
            try:
                defer = asyncio.get_running_loop().call_soon
            except RuntimeError:  # no event loop (tests, tools): bookkeeping runs inline
                defer = None
            result, state = self.scheduler.schedule(request, candidates, explain=self.explain, defer=defer)
            targets = result.targets
            if not targets:
                # upstream answers ResourceExhausted: no endpoint can take it now
                raise EPPError(429, f"no endpoint passed the filters of scheduling profile {result.primary!r} "
                                    f"({len(candidates)} candidates)")
        except EPPError as e:
            e.model = model
            raise
        tokens = (len(prompt) + 3) // 4
        for ep in targets[:1]:
            ep.in_flight += 1
            ep.in_flight_tokens += tokens
        prefill = result.prefill_target()
        if prefill is not None:
            prefill.in_flight += 1
            prefill.in_flight_tokens += tokens
        hit_ratio = state.get(HIT_RATIO)
        if hit_ratio is not None and self.metrics:
            self.metrics.prefix_hit_ratio.observe(hit_ratio)
        decision = Decision(request=request, targets=targets, destination=",".join(ep.address for ep in targets),
                            result=result, headers=result.headers, tokens=tokens, body=new_body,
                            served_model=target if new_body is not None else None, prefill=prefill)
        if self.explain:
            decision.explanation = self._explain(result)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request %s model=%r -> %s %s", request.request_id, model, decision.destination,
                      decision.explanation.decode() if decision.explanation else "")
        if self.metrics and model:
            self._series(request).running.inc()
        return decision

    def set_objectives(self, priorities: dict[str, int]) -> None:
        """From the InferenceObjective watch: the cluster's objectives over the --objective flags."""
        merged = dict(self.static_objectives)
        merged.update(priorities)
        self.objectives = merged

    def _priority(self, headers: dict[str, str]) -> int:
        name = headers.get(OBJECTIVE)
        return self.objectives.get(name, 0) if name else 0

    def _candidates(self, subset: list[str] | None) -> list[Endpoint]:
        endpoints = [ep for ep in self.store.snapshot() if ep.ready]
        if subset is not None:
            endpoints = _subset_filter(endpoints, subset)
            if not endpoints:
                raise EPPError(503, "no ready endpoint in the proxy's subset hint"
                               + (f" {subset[:8]}" if subset else " (the hint is empty)"))
        if not endpoints:
            raise EPPError(503, "no ready endpoint in the pool")
        t = now()
        oldest = t - self.staleness  # Metrics.fresh, inlined: this runs per candidate per request
        fresh = [ep for ep in endpoints if ep.metrics.updated >= oldest and ep.metrics.updated > 0.0]
        if fresh:
            self._warned_stale = False
            return fresh
        # Every endpoint's metrics are stale (scrapes failing, or not scraped yet): routing on load is
        # impossible, but refusing all traffic would turn a metrics outage into a full outage.
        if not self._warned_stale:
            log.warning("metrics of all %d candidate endpoints are stale; routing without load data", len(endpoints))
            self._warned_stale = True
        return endpoints

    @staticmethod
    def _explain(result: SchedulingResult) -> bytes:
        doc = {
            "pick": [ep.address for ep in result.targets],
            "profiles": {name: {"pick": [ep.address for ep in pr.targets], "scores": pr.scores,
                                "filtered": pr.filtered} for name, pr in result.profiles.items()},
        }
        if result.reasons:
            doc["reasons"] = result.reasons
        return orjson.dumps(doc)

    # ---------------------------------------------------------------- response path

    def prefill_done(self, decision: Decision) -> None:
        """The answer has started, so the prefill leg is over: the prefill pod is no longer busy with it."""
        ep = decision.prefill
        if ep is not None:
            decision.prefill = None
            ep.in_flight -= 1
            ep.in_flight_tokens -= decision.tokens

    def response_started(self, decision: Decision, status: int | None, sse: bool) -> list[tuple[str, str]] | None:
        """Headers the plugins add to the response (e.g. a session token); usage is read from here on."""
        self.prefill_done(decision)
        first = None
        if sse and decision.result is not None and self.scheduler.wants_first_chunk:
            def first() -> None:
                self.scheduler.response_first_chunk(decision.request, decision.result,
                                                    time.perf_counter() - decision.started)
        decision.usage = UsageReader(sse, first)
        if decision.result is None:
            return None
        return self.scheduler.response_headers(decision.request, decision.result, status)

    def served(self, endpoint: str) -> None:
        if self.metrics:
            self.metrics.served_total.labels(endpoint).inc()

    def done(self, decision: Decision, status: int | None) -> None:
        """Once per decided request, when its stream ends (answered, failed or cancelled)."""
        usage = decision.usage.finish() if decision.usage is not None else None
        decision.usage = None
        for ep in decision.targets[:1]:
            ep.in_flight -= 1
            ep.in_flight_tokens -= decision.tokens
        self.prefill_done(decision)
        if decision.result is not None:
            self.scheduler.response_complete(decision.request, decision.result, status, usage)
        if not self.metrics:
            return
        req = decision.request
        s = self._series(req)
        if req.model:
            s.running.dec()
        if status is not None and status >= 400:
            self.metrics.request_error_total.labels(req.model, req.target_model, str(status)).inc()
        if status is not None and status < 400:
            s.duration.observe(time.perf_counter() - decision.started)
        if usage is not None and usage.seen:
            s.input_tokens.observe(usage.prompt_tokens)
            s.output_tokens.observe(usage.completion_tokens)
            s.cached_tokens.observe(usage.cached_tokens)


class _Series:
    """One model's metric children, looked up once instead of per request."""

    __slots__ = ("request_total", "running", "duration", "input_tokens", "output_tokens", "cached_tokens")

    def __init__(self, m: EPPMetrics, model: str, target: str) -> None:
        self.request_total = m.request_total.labels(model, target)
        self.running = m.running_requests.labels(model)
        self.duration = m.request_duration.labels(model, target)
        self.input_tokens = m.input_tokens.labels(model, target)
        self.output_tokens = m.output_tokens.labels(model, target)
        self.cached_tokens = m.cached_tokens.labels(model, target)
