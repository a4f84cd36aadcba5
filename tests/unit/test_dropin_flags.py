"""Upstream's flags as pflag reads them, zap-shaped JSON logs, the health answers upstream's probes
expect, and the trace context a traced decision carries to the model server."""
import io
import json
import logging

import pytest
import yaml

from epp import flags, logs, tracing
from epp.server.health import NOT_SERVING, SERVICE_UNKNOWN, SERVING, Health

# every flag of llm-d router v0.10's EPP (pkg/epp/server/options.go, logging/options.go) and GIE v1.5's,
# except those other work owns (--grpc-max-*-msg-size: the transport; --emit-endpoint-scores: scheduling)
UPSTREAM = """
grpc-port: "9002"
grpc-health-port: "9003"
metrics-port: "9090"
ha-enable-leader-election: "true"
drain-timeout: 10s
pool-name: p
pool-namespace: ns
pool-group: inference.networking.k8s.io
endpoint-target-ports: "8000"
disable-endpoint-subset-filter: "true"
refresh-metrics-interval: 50ms
refresh-prometheus-metrics-interval: 5s
metrics-staleness-threshold: 2s
total-queued-requests-metric: vllm:num_requests_waiting
total-running-requests-metric: vllm:num_requests_running
kv-cache-usage-percentage-metric: vllm:kv_cache_usage_perc
lora-info-metric: vllm:lora_requests_info
cache-info-metric: vllm:cache_config_info
model-server-metrics-scheme: https
model-server-metrics-path: /metrics
model-server-metrics-port: "8001"
model-server-metrics-https-insecure-skip-verify: "false"
v: "3"
zap-devel: "false"
zap-encoder: console
zap-log-level: debug
zap-stacktrace-level: panic
zap-time-encoding: iso8601
tracing: "false"
health-checking: "true"
enable-pprof: "false"
cert-path: /certs
enable-cert-reload: "true"
secure-serving: "true"
tls-min-version: VersionTLS13
tls-cipher-suites: TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
enable-grpc-stream-metrics: "false"
metrics-endpoint-auth: "false"
config-text: "apiVersion: llm-d.ai/v1alpha1"
allow-experimental-plugins: "true"
"""


def test_every_upstream_flag_parses_in_both_spellings():
    values = yaml.safe_load(UPSTREAM)
    joined = [f"--{k}={v}" for k, v in values.items()]
    split = [w for k, v in values.items() for w in ((f"--{k}", v) if v not in ("true", "false") else (f"--{k}={v}",))]
    for argv in (joined, split):
        a = flags.parse(argv)
        assert (a.grpc_port, a.drain_timeout, a.endpoint_target_ports, a.model_server_metrics_port) == (9002, 10.0, [8000], 8001)
        assert a.tracing is False and a.metrics_endpoint_auth is False and a.health_checking is True
        assert (a.zap_encoder, a.zap_log_level, a.v, a.tls_cipher_suites) == ("console", -1, 3, ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"])
        assert not a.stray


def test_defaults_are_upstreams():
    a = flags.parse(["--pool-name", "p"])
    assert (a.tracing, a.metrics_endpoint_auth, a.enable_pprof, a.secure_serving, a.v) == (True, True, True, True, 2)
    assert (a.drain_timeout, a.refresh_prometheus_metrics_interval, a.model_server_metrics_scheme) == (30.0, 5.0, "http")
    assert flags.parse(["--endpoints-file", "f"]).drain_timeout == 0.0   # no Kubernetes: no drain, as file discovery


def test_bool_flags_take_their_value_only_after_an_equals_sign():
    """pflag: `--secure-serving false` is --secure-serving (true) and a stray word, which is ignored."""
    a = flags.parse(["--pool-name", "p", "--secure-serving", "false", "--tracing=0", "--enable-pprof=F"])
    assert a.secure_serving is True and a.tracing is False and a.enable_pprof is False
    assert a.stray == ["false"] and any("ignoring arguments" in n for n in a.notices)
    assert flags.parse(["--pool-name", "p", "--", "--tracing=false"]).tracing is True   # `--` ends the flags


def test_value_flags_take_the_next_word_whatever_it_is():
    a = flags.parse(["--pool-name", "--tracing=false", "--v", "-1"])
    assert a.pool_name == "--tracing=false" and a.tracing is True
    assert a.v == 2 and a.zap_level_from_v == 1           # negative -v: warn level, verbosity reset to 2


@pytest.mark.parametrize("argv", [["-v", "4"], ["-v=4"], ["-v4"], ["--v=4"], ["--v", "4"]])
def test_v_shorthand(argv):
    a = flags.parse(["--pool-name", "p", *argv])
    assert a.v == 4 and a.zap_level_from_v == -4


@pytest.mark.parametrize("argv", [["--zap-encoder", "xml"], ["--zap-log-level", "0"], ["--tracing=maybe"],
                                  ["--zap-time-encoding", "unix"], ["--grpc-port", "x"], ["--bogus"], ["-x"],
                                  ["--pool-name"], ["--drain-timeout", "soon"]])
def test_parse_errors_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        flags.parse(["--pool-name", "p", *argv])
    assert e.value.code == 2


@pytest.mark.parametrize("argv,why", [
    (["--endpoint-selector", "a=b", "--endpoint-target-ports", "1,2,3,4,5,6,7,8,9"], "length from 1 to 8"),
    (["--pool-name", "p", "--tls-min-version", "TLS12"], "tls-min-version"),
    (["--pool-name", "p", "--tls-cipher-suites", "NOPE"], "unknown cipher suite"),
    (["--pool-name", "p", "--metrics-client-ca-file", __file__], "requires \"metrics-cert-dir\""),
    (["--pool-name", "p", "--model-server-metrics-scheme", "ftp"], "it can only be set to 'http' or 'https'"),
    (["--pool-name", "p", "--endpoint-selector", "a=b", "--endpoint-target-ports", "1"], "either pool-name"),
])
def test_validation_errors(argv, why):
    with pytest.raises(flags.FlagError) as e:
        flags.parse(argv)
    assert why in str(e.value)


def test_target_ports_append_and_dedupe_and_notices():
    a = flags.parse(["--endpoint-selector", "app=v", "--endpoint-target-ports", "8000,8001",
                     "--endpoint-target-ports=8001,8002", "--total-queued-requests-metric", "x", "--enable-pprof"])
    assert a.endpoint_target_ports == [8000, 8001, 8002]
    assert "Flag --total-queued-requests-metric has been deprecated, use engineConfigs in EndpointPickerConfig instead" \
        in a.notices
    assert any(n.startswith("--enable-pprof is accepted but has no effect here") for n in a.notices)
    assert "total-queued-requests-metric" not in flags.processed(a)   # left out of "Flags processed", as upstream


def _log_line(encoder: str, level: int, **kw) -> str:
    buf = io.StringIO()
    rec = logging.LogRecord("setup", level, "/x/epp/runner/serve.py", 12, "hello %s", ("world",), None)
    for k, v in kw.items():
        setattr(rec, k, v)
    fmt = logs.JSONFormatter() if encoder == "json" else logs.ConsoleFormatter()
    buf.write(fmt.format(rec))
    return buf.getvalue()


def test_json_log_line_has_zaps_shape():
    d = json.loads(_log_line("json", logging.INFO, kv={"flags": {"v": 2}}))
    assert list(d)[:5] == ["level", "ts", "logger", "caller", "msg"]
    assert (d["level"], d["logger"], d["caller"], d["msg"], d["flags"]) == ("info", "setup", "runner/serve.py:12",
                                                                          "hello world", {"v": 2})
    assert isinstance(d["ts"], float)
    e = json.loads(_log_line("json", logging.ERROR))
    assert e["level"] == "error" and "stacktrace" in e
    assert _log_line("console", logging.WARNING).split("\t")[1:5] == ["WARN", "setup", "runner/serve.py:12",
                                                                      "hello world"]


@pytest.mark.parametrize("zap,level", [(2, logging.ERROR), (1, logging.WARNING), (0, logging.INFO), (-2, logging.INFO),
                                       (-3, logging.INFO), (-4, logging.DEBUG), (-5, logs.TRACE)])
def test_verbosity_maps_to_python_levels(zap, level):
    assert logs.python_level(zap) == level


def test_health_answers_as_upstream():
    synced, leader = [False], [False]
    plain = Health(lambda: synced[0])
    assert plain.status("inference-extension") == NOT_SERVING           # not synced: nothing is serving
    synced[0] = True
    for name in ("", "liveness", "readiness", "inference-extension", "envoy.service.ext_proc.v3.ExternalProcessor"):
        assert plain.status(name) == SERVING
    plain.draining = True
    assert plain.status("liveness") == NOT_SERVING

    ha = Health(lambda: synced[0], lambda: leader[0], leader_election=True)
    assert (ha.status("readiness"), ha.status("liveness"), ha.status("inference-extension")) == \
        (NOT_SERVING, SERVING, SERVICE_UNKNOWN)
    leader[0] = True
    assert ha.status("") == SERVING and ha.ready
    ha.draining = True
    assert (ha.status("readiness"), ha.status("liveness")) == (NOT_SERVING, SERVING)


def test_a_traced_decision_carries_the_callers_trace_to_the_model_server():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from epp.datalayer.endpoint import Endpoint, now
    from epp.datalayer.store import EndpointStore
    from epp.requestcontrol.director import Director
    from epp.scheduling.scheduler import default_scheduler
    store = EndpointStore()
    ep = Endpoint("a", "10.0.0.1:8000")
    ep.metrics.updated = now()
    store.replace([ep])
    exporter = InMemorySpanExporter()
    try:
        tracing.setup(exporter=exporter)
        d = Director(store, default_scheduler())
        tid = "0af7651916cd43dd8448eb211c80319c"
        dec = d.decide({"traceparent": f"00-{tid}-b7ad6b7169203331-01", ":method": "POST"}, "/v1/completions",
                       b'{"model": "m", "prompt": "x"}', None)
        sent = dict(dec.headers)
        assert sent["traceparent"].split("-")[1] == tid
        d.done(dec, 200)
        tracing.force_flush()
        spans = {s.name: s for s in exporter.get_finished_spans()}
        assert {"gateway.request", "gateway.request_orchestration", "run_scheduler_profile", "pick_endpoints"} <= \
            spans.keys()
        assert format(spans["gateway.request"].context.trace_id, "032x") == tid
        assert spans["gateway.request"].parent.span_id == 0xb7ad6b7169203331
        # a caller that did not sample: nothing recorded, the decision still passes the trace on unsampled
        dec = d.decide({"traceparent": f"00-{tid}-b7ad6b7169203331-00"}, "/v1/completions",
                       b'{"model": "m", "prompt": "x"}', None)
        assert dict(dec.headers)["traceparent"].startswith(f"00-{tid}-") and dec.headers[-1][1].endswith("-00")
    finally:
        tracing.shutdown()


def test_tracing_without_a_named_exporter_records_nothing(monkeypatch):
    """Our deliberate difference: upstream dumps sampled spans on stdout when OTEL_TRACES_EXPORTER is
    unset; epp records none then (and costs nothing), and traces once an exporter is named."""
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    try:
        tracing.setup()
        assert not tracing.on
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
        tracing.setup()
        assert tracing.on
    finally:
        tracing.shutdown()


def test_otlp_bytes_written_directly_equal_the_sdks_encoding():
    """epp.otlp writes the export request itself; it must say what the SDK's encoder says of the same span."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.sdk.resources import Resource

    from epp import otlp
    s = tracing.Span(tracing.SCHEDULING, "pick_endpoints", 0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7,
                     True, 1, {"s": "x", "b": True, "i": -3, "f": 0.5, "top": ["10.0.0.1:80"], "scores": [1.0, 0.25]})
    s.error, s.events, s.end_ns = "boom", [(5, "ValueError", "bad")], s.start_ns + 1000
    resource = Resource({"service.name": "llm-d-epp"})
    batcher = tracing._Batcher.__new__(tracing._Batcher)
    batcher.resource, batcher.scopes = resource, {}
    ours = ExportTraceServiceRequest.FromString(otlp.encode([s], dict(resource.attributes), tracing.VERSION))
    sdk = encode_spans([batcher._convert(s)])
    for rs in sdk.resource_spans:          # fields the SDK adds that carry nothing here
        rs.schema_url = ""
        for ss in rs.scope_spans:
            ss.schema_url = ""
            for sp in ss.spans:
                sp.flags = 0
    assert ours == sdk
