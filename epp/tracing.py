"""OpenTelemetry tracing (--tracing, on by default as upstream), set up from the OTEL_* environment the
way upstream's EPP reads it:

- OTEL_SERVICE_NAME defaults to "llm-d-epp", OTEL_EXPORTER_OTLP_ENDPOINT to http://localhost:4317
- OTEL_TRACES_EXPORTER "otlp" exports OTLP over gRPC (OTEL_EXPORTER_OTLP_* for TLS, headers, timeout);
  unset or anything else prints spans on stdout ("console")
- sampling is parent-based trace-ID ratio, OTEL_TRACES_SAMPLER_ARG (default 0.1); another
  OTEL_TRACES_SAMPLER is reported and replaced by that
- W3C trace context and baggage are read from the request and written into the request sent on

Per request: `gateway.request` (whole ext_proc stream) > `gateway.request_orchestration` (decision) >
`run_scheduler_profile` per profile > `filter_endpoints`, `llm_d.epp.scoring` > `llm_d.epp.scorer.<type>`,
`pick_endpoints`. With tracing off, `on` is False and every call site stops at that one check; with it
on, a request the sampler drops costs its root span and the header injection, nothing more.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("trace")

on = False            # tracing set up; call sites test this first
_tracers: dict = {}
_propagator = None
_provider = None

HANDLERS = "llm-d-router/pkg/epp/handlers"
REQUESTCONTROL = "llm-d-router/pkg/epp/requestcontrol"
SCHEDULING = "llm-d-router/pkg/epp/scheduling"
VERSION = "0.1.0"


def setup(service_name: str = "llm-d-epp", exporter=None) -> None:
    """Installs the tracer provider. `exporter` replaces the one the environment names (tests, benches)."""
    global on, _propagator, _provider
    from opentelemetry import trace
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    os.environ.setdefault("OTEL_SERVICE_NAME", service_name)
    os.environ.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317")
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "console")
    if exporter is None:
        if kind == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            exporter = OTLPSpanExporter()
        else:
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
    _provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)),
                               resource=Resource.create({"service.version": VERSION}))
    _provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(_provider)
    _propagator = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    for scope in (HANDLERS, REQUESTCONTROL, SCHEDULING):
        _tracers[scope] = _provider.get_tracer(scope, VERSION)
    on = True


def shutdown() -> None:
    """Flushes what is queued (at process stop)."""
    global on
    if _provider is not None:
        on = False
        _provider.shutdown()


def start(scope: str, name: str, parent=None, attributes: dict | None = None, server: bool = False,
          carrier: dict | None = None):
    """A started span: under `parent` (a span), or under the trace context in `carrier` (request
    headers), or under the current context."""
    from opentelemetry import trace
    if carrier is not None:
        ctx = _propagator.extract(carrier)
    elif parent is not None:
        ctx = trace.set_span_in_context(parent)
    else:
        ctx = None
    return _tracers[scope].start_span(name, context=ctx, attributes=attributes,
                                      kind=trace.SpanKind.SERVER if server else trace.SpanKind.INTERNAL)


def inject(span) -> list[tuple[str, str]]:
    """traceparent (and baggage) for the request sent on, continuing `span`'s trace."""
    from opentelemetry import trace
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return list(carrier.items())


def fail(span, message: str) -> None:
    from opentelemetry.trace import Status, StatusCode
    span.set_status(Status(StatusCode.ERROR, message))


def current():
    """The recording span the caller runs under, or None (tracing off, or this request not sampled)."""
    if not on:
        return None
    from opentelemetry import trace
    span = trace.get_current_span()
    return span if span.is_recording() else None


class use:
    """`with tracing.use(span):` makes `span` the current one (for code that finds it with current())."""

    __slots__ = ("span", "token")

    def __init__(self, span) -> None:
        self.span = span
        self.token = None

    def __enter__(self):
        if self.span is not None:
            from opentelemetry import context, trace
            self.token = context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, *exc) -> None:
        if self.token is not None:
            from opentelemetry import context
            context.detach(self.token)
