"""OpenTelemetry tracing (--tracing, on by default as upstream), set up from the OTEL_* environment the
way upstream's EPP reads it:

- OTEL_SERVICE_NAME defaults to "llm-d-epp", OTEL_EXPORTER_OTLP_ENDPOINT to http://localhost:4317;
  OTEL_RESOURCE_ATTRIBUTES is honoured
- OTEL_TRACES_EXPORTER "otlp" exports OTLP over gRPC (OTEL_EXPORTER_OTLP_* for TLS, headers, timeout);
  unset or anything else prints spans on stdout ("console")
- sampling is parent-based trace-ID ratio, OTEL_TRACES_SAMPLER_ARG (default 0.1); another
  OTEL_TRACES_SAMPLER is reported and replaced by that
- W3C trace context (and baggage) are read from the request and written into the request sent on;
  OTEL_BSP_SCHEDULE_DELAY / _MAX_QUEUE_SIZE / _MAX_EXPORT_BATCH_SIZE shape the export batches

Per request: `gateway.request` (whole ext_proc stream) > `gateway.request_orchestration` (decision) >
`run_scheduler_profile` per profile > `filter_endpoints`, `llm_d.epp.scoring` > `llm_d.epp.scorer.<type>`,
`pick_endpoints`.

Cost. With tracing off `on` is False and every call site stops at that one check. The SDK's own span
objects cost tens of microseconds each (sampler, locks, attribute validation), so on the request path
a span is a slotted record (a name, ids, two clock reads, a dict) and the sampling decision is made
here, by the same rule; a background thread exports finished records in batches: for OTLP written
straight to protobuf bytes and sent by the SDK's OTLP exporter (epp.otlp), for the console turned into
the SDK's ReadableSpan. A request the sampler drops costs its ids and the traceparent it passes on.
"""
from __future__ import annotations

import collections
import contextvars
import logging
import os
import random
import threading
import time

log = logging.getLogger("trace")

on = False            # tracing set up; call sites test this first
_ratio_bound = 0      # a root trace is sampled when the low 64 bits of its id are below this
_batcher: "_Batcher | None" = None
_current: contextvars.ContextVar = contextvars.ContextVar("epp_span", default=None)
_rand = random.Random()

HANDLERS = "llm-d-router/pkg/epp/handlers"
REQUESTCONTROL = "llm-d-router/pkg/epp/requestcontrol"
SCHEDULING = "llm-d-router/pkg/epp/scheduling"
VERSION = "0.1.0"
_INTERNAL, _SERVER = 0, 1


class Span:
    """A recording span: finished ones go to the export thread."""

    __slots__ = ("name", "scope", "trace_id", "span_id", "parent_id", "remote_parent", "kind", "start_ns",
                 "end_ns", "attrs", "error", "events")

    def __init__(self, scope: str, name: str, trace_id: int, parent_id: int, remote_parent: bool, kind: int,
                 attributes: dict | None) -> None:
        self.scope, self.name, self.trace_id, self.parent_id = scope, name, trace_id, parent_id
        self.remote_parent, self.kind = remote_parent, kind
        self.span_id = _rand.getrandbits(64) or 1
        self.attrs = dict(attributes) if attributes else {}
        self.error = None
        self.events = None
        self.end_ns = 0
        self.start_ns = time.time_ns()

    def is_recording(self) -> bool:
        return True

    def set_attribute(self, key: str, value) -> None:
        self.attrs[key] = value

    def record_exception(self, e: BaseException) -> None:
        self.events = (self.events or []) + [(time.time_ns(), type(e).__name__, str(e))]

    def end(self) -> None:
        if not self.end_ns:
            self.end_ns = time.time_ns()
            if _batcher is not None:
                _batcher.add(self)


class _Unsampled:
    """A span the sampler dropped: it records nothing, but its ids still travel in traceparent."""

    __slots__ = ("trace_id", "span_id")

    def __init__(self, trace_id: int) -> None:
        self.trace_id, self.span_id = trace_id, _rand.getrandbits(64) or 1

    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key, value) -> None:
        pass

    def record_exception(self, e) -> None:
        pass

    def end(self) -> None:
        pass


def _parse_traceparent(value: str | None) -> tuple[int, int, bool] | None:
    """(trace id, parent span id, sampled) of a W3C traceparent, None when absent or malformed."""
    if not value or len(value) < 55:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3][:2], 16)
    except ValueError:
        return None
    if not trace_id or not span_id or (parts[0] == "00" and len(parts) != 4):
        return None
    return trace_id, span_id, bool(flags & 1)


def start(scope: str, name: str, parent=None, attributes: dict | None = None, server: bool = False,
          carrier: dict | None = None):
    """A started span: a root under the trace context in `carrier` (the request's headers), sampled as
    parent-based trace-ID ratio; or a child of `parent` (a recording span)."""
    kind = _SERVER if server else _INTERNAL
    if parent is not None:
        return Span(scope, name, parent.trace_id, parent.span_id, False, kind, attributes)
    incoming = _parse_traceparent(carrier.get("traceparent")) if carrier else None
    if incoming is not None:
        trace_id, parent_id, sampled = incoming
        if not sampled:
            return _Unsampled(trace_id)
        return Span(scope, name, trace_id, parent_id, True, kind, attributes)
    trace_id = _rand.getrandbits(128) or 1
    if (trace_id & 0xFFFFFFFFFFFFFFFF) >= _ratio_bound:
        return _Unsampled(trace_id)
    return Span(scope, name, trace_id, 0, False, kind, attributes)


def inject(span, carrier: dict | None = None) -> list[tuple[str, str]]:
    """traceparent for the request sent on, continuing `span`'s trace (and the caller's baggage)."""
    out = [("traceparent", f"00-{span.trace_id:032x}-{span.span_id:016x}-{'01' if span.is_recording() else '00'}")]
    if carrier and carrier.get("baggage"):
        out.append(("baggage", carrier["baggage"]))
    return out


def fail(span, message: str) -> None:
    if span.is_recording():
        span.error = message


def current():
    """The recording span the caller runs under, or None (tracing off, or this request not sampled)."""
    return _current.get() if on else None


class use:
    """`with tracing.use(span):` makes `span` the current one (for code that finds it with current())."""

    __slots__ = ("span", "token")

    def __init__(self, span) -> None:
        self.span = span
        self.token = None

    def __enter__(self):
        if self.span is not None:
            self.token = _current.set(self.span)
        return self.span

    def __exit__(self, *exc) -> None:
        if self.token is not None:
            _current.reset(self.token)


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class _Batcher:
    """The export thread: finished records in, the SDK's ReadableSpans out to the exporter in batches."""

    def __init__(self, exporter, resource) -> None:
        self.exporter, self.resource = exporter, resource
        self.records = getattr(exporter, "takes_records", False)   # epp.otlp: no SDK span objects needed
        self.delay = _env_number("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000.0
        self.max_queue = int(_env_number("OTEL_BSP_MAX_QUEUE_SIZE", 2048))
        self.max_batch = int(_env_number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))
        self.wake_at = max(1, self.max_queue // 2)
        self.queue: collections.deque = collections.deque()
        self.dropped = 0
        self.wake = threading.Event()
        self.stopping = False
        self.scopes: dict = {}
        self.thread = threading.Thread(target=self._run, name="otel export", daemon=True)
        self.thread.start()

    def add(self, span: Span) -> None:
        if len(self.queue) >= self.max_queue:
            self.dropped += 1
            return
        self.queue.append(span)
        # waking the export thread costs the request path a GIL hand-over (milliseconds, not
        # microseconds): only when the queue is half full, else at the schedule delay
        if len(self.queue) == self.wake_at:
            self.wake.set()

    def _run(self) -> None:
        while not self.stopping:
            self.wake.wait(self.delay)
            self.wake.clear()
            self.flush()

    def flush(self) -> None:
        while self.queue:
            batch = []
            while self.queue and len(batch) < self.max_batch:
                batch.append(self.queue.popleft())
            if not self.records:
                batch = [self._convert(s) for s in batch]
            try:
                self.exporter.export(batch)
            except Exception as e:   # an exporter must not take the EPP down
                log.error("trace error occurred", extra={"kv": {"error": str(e)}})

    def _convert(self, s: Span):
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
        scope = self.scopes.get(s.scope)
        if scope is None:
            scope = self.scopes[s.scope] = InstrumentationScope(s.scope, VERSION)
        flags = TraceFlags(TraceFlags.SAMPLED)
        parent = SpanContext(s.trace_id, s.parent_id, s.remote_parent, flags) if s.parent_id else None
        events = [Event("exception", {"exception.type": t, "exception.message": m}, ts) for ts, t, m in s.events] \
            if s.events else ()
        return ReadableSpan(
            name=s.name, context=SpanContext(s.trace_id, s.span_id, False, flags), parent=parent,
            resource=self.resource, attributes=s.attrs, events=events,
            kind=SpanKind.SERVER if s.kind == _SERVER else SpanKind.INTERNAL,
            status=Status(StatusCode.ERROR, s.error) if s.error is not None else Status(StatusCode.UNSET),
            start_time=s.start_ns, end_time=s.end_ns, instrumentation_scope=scope)

    def shutdown(self) -> None:
        self.stopping = True
        self.wake.set()
        self.thread.join(10)
        self.flush()
        if self.dropped:
            log.warning("trace export queue was full: %d spans dropped", self.dropped)
        self.exporter.shutdown()


def setup(service_name: str = "llm-d-epp", exporter=None) -> None:
    """Starts tracing. `exporter` replaces the one the environment names (tests, benchmarks)."""
    global on, _ratio_bound, _batcher
    from opentelemetry.sdk.resources import Resource

    os.environ.setdefault("OTEL_SERVICE_NAME", service_name)
    os.environ.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317")
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "")
    if exporter is None and not kind:
        # deliberately unlike upstream, which then pretty-prints a tenth of all requests' spans on
        # stdout: nothing is traced until an exporter is named (upstream's Helm chart names one), so an
        # EPP deployed with the default flags neither floods its log nor pays for spans
        log.info("tracing is on but OTEL_TRACES_EXPORTER is not set: no spans are recorded "
                 "(set it to otlp, or console for upstream's stdout dump)")
        return
    resource = Resource.create({"service.version": VERSION})
    if exporter is None:
        if kind == "otlp":
            from .otlp import RecordsExporter
            exporter = RecordsExporter(resource.attributes, VERSION)
        else:
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter
            exporter = ConsoleSpanExporter()
    log.info("init OTel trace exporter", extra={"kv": {"type": kind}})
    sampler_name = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    try:
        ratio = float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "0.1"))
    except ValueError:
        ratio = 0.1
    if sampler_name != "parentbased_traceidratio":
        log.error("trace error occurred", extra={"kv": {"error": f"unsupported sampler type: {sampler_name}, "
                                                                 "fallback to parentbased_traceidratio with 0.1 Ratio"}})
        ratio = 0.1
    # the SDK's TraceIdRatioBased rule: sampled when the id's low 64 bits are below ratio * 2^64
    _ratio_bound = round(max(0.0, min(1.0, ratio)) * (1 << 64))
    _batcher = _Batcher(exporter, resource)
    on = True


def shutdown() -> None:
    """Exports what is queued (at process stop)."""
    global on, _batcher
    on = False
    if _batcher is not None:
        b, _batcher = _batcher, None
        b.shutdown()


def force_flush() -> None:
    if _batcher is not None:
        _batcher.flush()
