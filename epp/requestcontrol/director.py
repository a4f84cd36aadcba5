"""Turns one request into a routing decision: parse, admit, pick candidates, schedule, and the
response-side accounting once the answer is through.

Admission: with flow control (feature gate flowControl) every request passes through its queue
before candidates are chosen (FlowAdmission: at once while the pool is not saturated, else it waits);
without it, the legacy path sheds sheddable requests (priority < 0) when the candidates are saturated."""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import TYPE_CHECKING, Awaitable, Sequence

import orjson

from ..datalayer.address import canonical
from ..datalayer.endpoint import Endpoint, now
from ..datalayer.store import EndpointStore
from .. import tracing
from ..headers import (DEFAULT_FAIRNESS_ID, DROPPED_REASON, FAIRNESS_ID, FAIRNESS_ID_OLD, OBJECTIVE, OBJECTIVE_OLD,
                       REQUEST_ID, REWRITE, REWRITE_OLD)
from ..metrics import MODEL_SERVER_ERROR, EPPMetrics, capped_fairness_id, capped_model
from ..scheduling.config import default_parsers, default_saturation_detector
from ..scheduling.framework import Parser, SaturationDetector
from ..scheduling.scheduler import Scheduler
from ..scheduling.types import HIT_RATIO, HIT_SOURCE, SERVED_ATTR, LLMRequest, SchedulingResult
from .admission import NO_ENDPOINTS, SATURATED, FlowAdmission, eviction_error
from .errors import EPPError, bad_request
from .interface import Decision, Subset
from .parse import NO_MODEL, Routes, parse_body
from .rewrite import Rewrites
from .usage import UsageReader

log = logging.getLogger(__name__)

_BODY_METHODS = ("POST", "PUT", "PATCH")
if TYPE_CHECKING:
    from ..observe.observer import Observer as Observe



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
                 saturation: SaturationDetector | None = None, rewrites: Rewrites | None = None,
                 parsers: list[Parser] | None = None, emit_scores: bool = False, subset_filter: bool = True,
                 observe: "Observe | None" = None, admission: FlowAdmission | None = None) -> None:
        """parsers: requestHandler.parsers in order (upstream's defaults when None); emit_scores: give the
        proxy every scored candidate's score in the envoy.lb metadata (--emit-endpoint-scores);
        subset_filter: False ignores the proxy's subset hint (--disable-endpoint-subset-filter);
        observe: the web view's and the prediction-accuracy metric's hooks (epp.observe); admission:
        flow control, when its feature gate is on."""
        self.subset_filter = subset_filter
        self.store = store
        self.scheduler = scheduler
        self.metrics = metrics
        self.staleness = staleness
        self.static_objectives = dict(objectives or {})
        self.objectives = dict(self.static_objectives)
        self.rewrites = rewrites or Rewrites()
        self.explain = explain
        self.routes = Routes([p.routes for p in (parsers if parsers is not None else default_parsers())])
        self.emit_scores = emit_scores
        # sheds sheddable requests; upstream's utilization detector with our staleness unless configured
        self.saturation = saturation or default_saturation_detector(staleness)
        self._ids = itertools.count(1)
        self._warned_stale = False
        self._by_model: dict[tuple, _Series] = {}
        self._hit_children: dict = {}
        # epp.observe: the prediction-accuracy metric always; with the web view on, a record of every decision
        self.observe = observe
        self._recording = observe is not None and observe.recording
        self.admission = admission
        if admission is not None:
            admission.set_desired_priorities(set(self.objectives.values()))
        store.on_change(lambda added, removed: scheduler.endpoints_removed([e.address for e in removed]))

    # ---------------------------------------------------------------- request path

    def body_required(self, method: str, path: str) -> bool:
        if method not in _BODY_METHODS:
            return False
        grammar = self.routes.grammar(path)
        return grammar is not None and grammar not in NO_MODEL

    def decide(self, headers: dict[str, str], path: str, raw_body: bytes | None,
               subset: Subset) -> Decision | Awaitable[Decision]:
        """Raises EPPError for anything the client should be told (and counts it). A request whose
        plugins need I/O first (e.g. tokenizing through the model server) gets an awaitable of its
        Decision; every other request is decided at once."""
        if tracing.on:
            return self._traced_decide(headers, path, raw_body, subset)
        return self._decide(headers, path, raw_body, subset)

    def _traced_decide(self, headers: dict[str, str], path: str, raw_body: bytes | None,
                       subset: Subset) -> Decision | Awaitable[Decision]:
        """decide() under the request's spans: gateway.request for the whole stream (ended by done()),
        gateway.request_orchestration for the decision, the scheduler's spans under it."""
        root = tracing.start(tracing.HANDLERS, "gateway.request", carrier=headers, server=True)
        orch = (tracing.start(tracing.REQUESTCONTROL, "gateway.request_orchestration", parent=root, server=True)
                if root.is_recording() else None)
        try:
            with tracing.use(orch):
                out = self._decide(headers, path, raw_body, subset)
        except EPPError as e:
            self._end_failed(root, orch, e)
            raise
        if isinstance(out, Decision):
            return self._traced_decision(out, root, orch, headers)

        async def later() -> Decision:
            try:
                with tracing.use(orch):
                    d = await out
            except EPPError as e:
                self._end_failed(root, orch, e)
                raise
            return self._traced_decision(d, root, orch, headers)
        # a task, as `out` may be: cancelling it (the client left) cancels what it awaits (a queued request)
        return asyncio.ensure_future(later())

    @staticmethod
    def _traced_decision(d: Decision, root, orch, headers: dict[str, str]) -> Decision:
        if orch is not None:
            orch.set_attribute("target_model", d.request.target_model)
            orch.set_attribute("request_prio", d.request.priority)
            orch.end()
        d.span = root
        # the model server continues the trace (sampled or not: the decision travels with it)
        d.headers = (d.headers or []) + tracing.inject(root, headers)
        return d

    @staticmethod
    def _end_failed(root, orch, e: EPPError) -> None:
        if orch is not None:
            orch.record_exception(e)
            tracing.fail(orch, str(e))
            orch.end()
        tracing.fail(root, str(e))
        root.end()

    def _decide(self, headers: dict[str, str], path: str, raw_body: bytes | None,
                subset: Subset) -> Decision | Awaitable[Decision]:
        t0 = time.perf_counter()
        try:
            request, new_body = self._request(headers, path, raw_body)
        except EPPError as e:
            self._count_error(e, headers, self._priority(headers))
            raise
        hint = parse_subset(subset) if self.subset_filter else None
        if self.admission is not None:
            try:
                queued = self.admission.admit(request, len(raw_body) if raw_body else 0)
            except EPPError as e:
                e.model = request.model
                self._count_error(e, request.headers, request.priority)
                raise
            if queued is not None:   # a future, so the transport can cancel it when the client leaves
                return asyncio.ensure_future(self._decide_after_queue(queued, request, new_body, hint, t0, raw_body))
        waits = self.scheduler.prepare(request)
        if waits:
            return self._decide_later(waits, request, new_body, hint, t0, raw_body)
        return self._counted_schedule(request, new_body, hint, t0, raw_body)

    async def _decide_after_queue(self, queued: Awaitable[None], request: LLMRequest, new_body: bytes | None,
                                  subset: list[str] | None, t0: float, raw_body: bytes | None) -> Decision:
        try:
            await queued
        except EPPError as e:
            e.model = request.model
            self._count_error(e, request.headers, request.priority)
            raise
        try:
            waits = self.scheduler.prepare(request)
            if waits:
                return await self._decide_later(waits, request, new_body, subset, t0, raw_body)
            return self._counted_schedule(request, new_body, subset, t0, raw_body)
        finally:
            self.admission.settled()   # scheduled or not: flow control's next release may go

    def validate_body(self, path: str, body: bytes) -> None:
        grammar = self.routes.grammar(path)
        if grammar:
            parse_body(grammar, body)

    async def _decide_later(self, waits: list, request: LLMRequest, new_body: bytes | None,
                            subset: list[str] | None, t0: float, raw_body: bytes | None) -> Decision:
        for r in await asyncio.gather(*waits, return_exceptions=True):
            if isinstance(r, BaseException):   # preparers fall back themselves; a bug must not fail the request
                log.error("prepare step failed for request %s", request.request_id, exc_info=r)
        return self._counted_schedule(request, new_body, subset, t0, raw_body)

    def _counted_schedule(self, request: LLMRequest, new_body: bytes | None, subset: list[str] | None,
                          t0: float = 0.0, raw_body: bytes | None = None) -> Decision:
        try:
            decision = self._schedule(request, new_body, subset)
        except EPPError as e:
            self._count_error(e, request.headers, request.priority)
            if self._recording:
                self.observe.rejected(request, e, t0)
            raise
        if self._recording:
            self.observe.decided(decision, t0)
        if t0:
            decision.started = t0
        m = self.metrics
        if m:
            s = self._series(decision.request)
            s.request_total.inc()
            if raw_body:
                s.request_size.observe(len(raw_body))
            if request.model:
                s.running.inc()
            m.request_processing.observe(time.perf_counter() - decision.started)
        return decision

    def _count_error(self, e: EPPError, headers: dict[str, str], priority: int) -> None:
        m = self.metrics
        if m:
            model, code = capped_model(e.model), m.error_code(e.status)
            m.llmd_request_error_total.labels(model, model, self._fairness(headers), str(priority), code).inc()

    @staticmethod
    def _fairness(headers: dict[str, str]) -> str:
        return capped_fairness_id(headers.get(FAIRNESS_ID) or headers.get(FAIRNESS_ID_OLD) or DEFAULT_FAIRNESS_ID)

    def _series(self, req: LLMRequest) -> "_Series":
        h = req.headers
        key = (req.model, req.target_model, h.get(FAIRNESS_ID) or h.get(FAIRNESS_ID_OLD) or DEFAULT_FAIRNESS_ID,
               req.priority)
        s = self._by_model.get(key)
        if s is None:
            s = self._by_model[key] = _Series(self.metrics, capped_model(key[0]), capped_model(key[1]),
                                              capped_fairness_id(key[2]), str(key[3]))
        return s

    def _request(self, headers: dict[str, str], path: str, raw_body: bytes | None) -> tuple[LLMRequest, bytes | None]:
        api = ""
        body, model, prompt, stream, salt = None, "", b"", False, ""
        if raw_body is not None:
            api = self.routes.grammar(path) or ""
            if not api:
                raise bad_request(f"no parser registered matching path suffix for: {path.split('?', 1)[0]}")
            body, model, prompt, stream, salt = parse_body(api, raw_body)
        target = model
        new_body = None
        if body is not None and model:
            rewritten = headers.get(REWRITE) or headers.get(REWRITE_OLD) or self.rewrites.target(model)
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
            # legacy admission; with flow control sheddable requests wait in their band instead
            if self.admission is None and request.priority < 0 and self.saturation.saturation(candidates) >= 1.0:
                raise EPPError(429, "system saturated, sheddable request dropped")
            refused = self.scheduler.admit(request, candidates)
            if refused:   # upstream answers an admission plugin's refusal as an internal error
                raise EPPError(500, f"request cannot be admitted: {refused}")
            try:
                defer = asyncio.get_running_loop().call_soon
            except RuntimeError:  # no event loop (tests, tools): bookkeeping runs inline
                defer = None
            result, state = self.scheduler.schedule(request, candidates, explain=self.explain, defer=defer,
                                                    record=self._recording)
            targets = result.targets
            if not targets:
                # upstream answers ResourceExhausted: no endpoint can take it now
                raise EPPError(429, f"no endpoint passed the filters of scheduling profile {result.primary!r} "
                                    f"({len(candidates)} candidates)", [(DROPPED_REASON, SATURATED)])
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
            self._hit_child(state.get(HIT_SOURCE)).observe(hit_ratio)
        decision = Decision(request=request, targets=targets, destination=result.destination or ",".join(ep.address for ep in targets),
                            result=result, headers=result.headers, tokens=tokens, body=new_body,
                            served_model=target if new_body is not None else None, prefill=prefill)
        if self.emit_scores:
            decision.scores = result.profiles[result.primary].endpoint_scores() or None
        if self.explain:
            decision.explanation = self._explain(result)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request %s model=%r -> %s %s", request.request_id, model, decision.destination,
                      decision.explanation.decode() if decision.explanation else "")
        if self.admission is not None and self.admission.evicts:
            self.admission.dispatched(id(decision), request.priority, lambda: self._evict(decision))
        return decision

    @staticmethod
    def _evict(decision: Decision) -> None:
        """Flow control revokes this in-flight request: its stream ends now with 429 `evicted`."""
        if decision.revoke is not None:
            decision.revoke(eviction_error())

    def _hit_child(self, source):
        child = self._hit_children.get(source)
        if child is None:
            child = self._hit_children[source] = self.metrics.llmd_prefix_hit_ratio.labels(*(source or ("", "")))
        return child

    def set_objectives(self, priorities: dict[str, int]) -> None:
        """From the InferenceObjective watch: the cluster's objectives over the --objective flags."""
        merged = dict(self.static_objectives)
        merged.update(priorities)
        self.objectives = merged
        if self.admission is not None:
            self.admission.set_desired_priorities(set(merged.values()))

    def _priority(self, headers: dict[str, str]) -> int:
        name = headers.get(OBJECTIVE) or headers.get(OBJECTIVE_OLD)
        return self.objectives.get(name, 0) if name else 0

    def _candidates(self, subset: list[str] | None) -> list[Endpoint]:
        endpoints = [ep for ep in self.store.snapshot() if ep.ready]
        if subset is not None:
            endpoints = _subset_filter(endpoints, subset)
            if not endpoints:
                raise EPPError(503, "no ready endpoint in the proxy's subset hint"
                               + (f" {subset[:8]}" if subset else " (the hint is empty)"),
                               [(DROPPED_REASON, NO_ENDPOINTS)])
        if not endpoints:
            raise EPPError(503, "no ready endpoint in the pool", [(DROPPED_REASON, NO_ENDPOINTS)])
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

    def response_started(self, decision: Decision, status: int | None, sse: bool,
                         served: str | None = None) -> list[tuple[str, str]] | None:
        """Headers the plugins add to the response (e.g. a session token); usage is read from here on."""
        if served is not None:   # for plugins that check where the proxy sent it (the conformance verifier)
            req = decision.request
            if req.attrs is None:
                req.attrs = {}
            req.attrs[SERVED_ATTR] = served
        self.prefill_done(decision)
        # TTFT runs to the first body byte (the usage reader notes it), as upstream's: vLLM sends the
        # headers as soon as it takes the request, before any prefill; a stream's first chunk is its first token
        first = None
        if sse and decision.result is not None and self.scheduler.wants_first_chunk:
            def first() -> None:
                self.scheduler.response_first_chunk(decision.request, decision.result,
                                                    time.perf_counter() - decision.started)
        decision.usage = (UsageReader(sse, first) if decision.trace is None
                          else self.observe.usage_reader(decision.trace, sse, first))
        if decision.result is None:
            return None
        return self.scheduler.response_headers(decision.request, decision.result, status)

    def served(self, endpoint: str) -> None:
        if self.metrics:
            self.metrics.served_total.labels(endpoint).inc()

    def done(self, decision: Decision, status: int | None) -> None:
        """Once per decided request, when its stream ends (answered, failed or cancelled)."""
        reader, decision.usage = decision.usage, None
        usage = reader.finish() if reader is not None else None
        first = reader.first_at if reader is not None else 0.0
        for ep in decision.targets[:1]:
            ep.in_flight -= 1
            ep.in_flight_tokens -= decision.tokens
        self.prefill_done(decision)
        if decision.result is not None:
            self.scheduler.response_complete(decision.request, decision.result, status, usage)
        if decision.span is not None:
            if status is not None and status >= 400:
                tracing.fail(decision.span, str(status))
            decision.span.end()
            decision.span = None
        if self.observe is not None:
            self.observe.finished(decision, usage, status)
        if self.admission is not None:
            self.admission.done(id(decision))
        m = self.metrics
        if not m:
            return
        req = decision.request
        s = self._series(req)
        if req.model:
            s.running.dec()
        if status is not None and status >= 400:
            model, target = capped_model(req.model), capped_model(req.target_model)
            m.llmd_request_error_total.labels(model, target, s.fairness, s.priority, MODEL_SERVER_ERROR).inc()
        if status is not None and status < 400:
            end = time.perf_counter()
            e2e = end - decision.started
            s.duration.observe(e2e)
            if first:
                s.ttft_streaming[req.stream].observe(first - decision.started)
            if usage is not None and usage.seen and usage.completion_tokens > 0:
                s.ntpot.observe(e2e / usage.completion_tokens)
                if req.stream and first and usage.completion_tokens > 1:
                    s.tpot.observe((end - first) / (usage.completion_tokens - 1))
        if usage is not None:
            s.response_size.observe(usage.response_bytes)
            if usage.seen:
                if usage.prompt_tokens > 0:
                    s.input_tokens.observe(usage.prompt_tokens)
                if usage.completion_tokens > 0:
                    s.output_tokens.observe(usage.completion_tokens)
                s.cached_tokens.observe(usage.cached_tokens)


class _Series:
    """One (model, target model, fairness id, priority)'s metric children, looked up once instead of per
    request (the legacy GIE series are views of these: epp/histogram.py)."""

    __slots__ = ("request_total", "running", "duration", "input_tokens", "output_tokens", "cached_tokens",
                 "request_size", "response_size", "ntpot", "tpot", "ttft_streaming", "fairness", "priority")

    def __init__(self, m: EPPMetrics, model: str, target: str, fairness: str, priority: str) -> None:
        self.fairness, self.priority = fairness, priority
        mfp = (model, target, fairness, priority)
        self.request_total = m.llmd_request_total.labels(*mfp)
        self.running = m.llmd_running.labels(*mfp)
        self.duration = m.llmd_request_duration.labels(*mfp)
        self.input_tokens = m.llmd_input_tokens.labels(*mfp)
        self.output_tokens = m.llmd_output_tokens.labels(*mfp)
        self.cached_tokens = m.llmd_cached_tokens.labels(*mfp)
        self.request_size = m.llmd_request_size.labels(*mfp)
        self.response_size = m.llmd_response_size.labels(*mfp)
        self.ntpot = m.llmd_ntpot.labels(*mfp)
        self.tpot = m.llmd_tpot.labels(*mfp)
        self.ttft_streaming = {False: m.llmd_ttft.labels(*mfp, "false"), True: m.llmd_ttft.labels(*mfp, "true")}
