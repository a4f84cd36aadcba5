"""The runtime flags a drop-in for upstream's EPP needs, each against real sockets: ext_proc certificate
reload (native and grpcio: an open stream keeps working, a new connection gets the new certificate),
model-server metrics from another port, path and scheme (TLS), --health-checking on the ext_proc port,
data-parallel ranks (targetPorts + llm-d.ai/active-ports) through Envoy, /metrics behind TokenReview and
SubjectAccessReview, the drain on SIGTERM with the lease released, and OpenTelemetry spans over OTLP."""
import asyncio
import datetime
import http.client
import http.server
import ipaddress
import json
import os
import signal
import socket
import ssl
import threading
import time

import grpc
import pytest
from envoy.config.core.v3 import base_pb2 as core
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pbg

from testbed.endpoints import write_endpoints
from testbed.grpc_health import health
from testbed.http1 import post
from testbed.ports import free_port
from testbed.standin_pod import Pod
from testbed.wait import wait_for

from .fake_kube import FakeKube, inference_pool, pod
from .stack import Envoy, Epp, PodGroup, landed_right

pytestmark = pytest.mark.envoy
MODE = "FULL_DUPLEX_STREAMED"


def make_cert(org: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def install(cert_dir: str, pair: tuple[bytes, bytes]) -> None:
    """As the kubelet updates a Secret volume: the new files appear at once (rename)."""
    for name, data in (("tls.crt", pair[0]), ("tls.key", pair[1])):
        tmp = os.path.join(cert_dir, f".{name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(cert_dir, name))


def served_cert(port: int) -> bytes:
    """The certificate a new TLS connection (ALPN h2) to 127.0.0.1:port is shown, as PEM."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return ssl.DER_cert_to_PEM_cert(s.getpeercert(binary_form=True)).encode()


def same_cert(a: bytes, b: bytes) -> bool:
    return ssl.PEM_cert_to_DER_cert(a.decode()) == ssl.PEM_cert_to_DER_cert(b.decode())


def headers_msg(**kv) -> pb.ProcessingRequest:
    hm = core.HeaderMap(headers=[core.HeaderValue(key=k, raw_value=v.encode()) for k, v in kv.items()])
    return pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=hm, end_of_stream=True))


def destination(resp: pb.ProcessingResponse) -> str | None:
    for h in resp.request_headers.response.header_mutation.set_headers:
        if h.header.key == "x-gateway-destination-endpoint":
            return (h.header.raw_value or h.header.value.encode()).decode()
    return None


@pytest.fixture
def pods():
    group = PodGroup(2)
    yield group
    group.close()


@pytest.mark.parametrize("transport", ["native", "grpcio"])
def test_cert_reload_keeps_open_streams_and_serves_new_handshakes(tmp_path, pods, transport):
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    first, second = make_cert("first"), make_cert("second")
    install(str(cert_dir), first)
    efile = str(tmp_path / "eps.yaml")
    write_endpoints(efile, pods.pods)
    epp = Epp(str(tmp_path), efile, "--secure-serving=true", "--cert-path", str(cert_dir), "--enable-cert-reload",
              "--ext-proc-server", transport)
    port = epp.ports["grpc"]
    pool = {p.address for p in pods.pods}

    def channel(root: bytes) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root_certificates=root),
                                       options=[("grpc.ssl_target_name_override", "localhost")])

    async def scenario() -> None:
        old = channel(first[0])
        call = pbg.ExternalProcessorStub(old).Process()
        await call.write(headers_msg(**{":method": "GET", ":path": "/", ":authority": "x"}))
        assert destination(await call.read()) in pool              # the stream is open and answered

        install(str(cert_dir), second)
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: wait_for(lambda: same_cert(served_cert(port), second[0]), what="the new certificate"))

        # the stream opened before the reload goes on over its connection
        await call.write(pb.ProcessingRequest(response_headers=pb.HttpHeaders(
            headers=core.HeaderMap(headers=[core.HeaderValue(key=":status", raw_value=b"200")]))))
        assert (await call.read()).WhichOneof("response") == "response_headers"
        await call.done_writing()
        await old.close()

        # a new connection trusting the new certificate works; one trusting only the old one fails
        new = channel(second[0])
        r = await pbg.ExternalProcessorStub(new).Process(iter([headers_msg(**{":method": "GET", ":path": "/"})])).read()
        assert destination(r) in pool
        await new.close()
        stale = channel(first[0])
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await pbg.ExternalProcessorStub(stale).Process(iter([headers_msg(**{":method": "GET", ":path": "/"})])).read()
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        await stale.close()
    try:
        asyncio.run(scenario())
        assert "new certificate from" in epp.output()
    finally:
        epp.stop()


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    waiting = 7
    paths: list = []

    def do_GET(self):
        type(self).paths.append(self.path)
        body = (f'vllm:num_requests_waiting{{model_name="m"}} {self.waiting}\n'
                'vllm:num_requests_running{model_name="m"} 1\nvllm:kv_cache_usage_perc{model_name="m"} 0.25\n').encode()
        self.send_response(200 if self.path == "/custom/metrics" else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_model_server_metrics_from_another_port_path_and_tls_and_ext_proc_port_health(tmp_path, pods):
    """GIE's --model-server-metrics-*: the pods serve requests on one port and metrics over TLS on another
    (self-signed, as upstream's default insecure-skip-verify accepts); --health-checking answers on the
    ext_proc port."""
    cert_dir = tmp_path / "m"
    cert_dir.mkdir()
    install(str(cert_dir), make_cert("metrics"))
    mport = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", mport), _MetricsHandler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert_dir / "tls.crt"), str(cert_dir / "tls.key"))
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    efile = str(tmp_path / "eps.yaml")
    write_endpoints(efile, pods.pods[:1])          # one pod, so the pool's average is that pod's value
    epp = Epp(str(tmp_path), efile, "--model-server-metrics-scheme", "https", "--model-server-metrics-port",
              str(mport), "--model-server-metrics-path", "/custom/metrics", "--refresh-prometheus-metrics-interval",
              "100ms", "--health-checking")
    try:
        wait_for(lambda: epp.sample("inference_pool_average_queue_size") == 7.0, what="metrics scraped over TLS")
        assert epp.sample("inference_pool_average_kv_cache_utilization") == 0.25
        assert set(_MetricsHandler.paths) == {"/custom/metrics"}
        assert "Flag --model-server-metrics-port has been deprecated" in epp.output()
        assert health(epp.ports["grpc"], "envoy.service.ext_proc.v3.ExternalProcessor") == "SERVING"
    finally:
        epp.stop()
    # llm-d v0.10's way: metrics-data-source in the config's dataLayer, its CA verifying the server
    _MetricsHandler.paths.clear()
    cfg = f"""apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: metrics-data-source
  parameters: {{scheme: https, port: {mport}, path: /custom/metrics, insecureSkipVerify: false,
               caCertPath: "{cert_dir / 'tls.crt'}"}}
- type: core-metrics-extractor
- type: queue-scorer
dataLayer:
  sources:
  - pluginRef: metrics-data-source
    extractors: [{{pluginRef: core-metrics-extractor}}]
"""
    epp = Epp(str(tmp_path), efile, "--config-text", cfg, "--refresh-prometheus-metrics-interval", "100ms")
    try:
        wait_for(lambda: epp.sample("inference_pool_average_queue_size") == 7.0, what="scraped over verified TLS")
        assert set(_MetricsHandler.paths) == {"/custom/metrics"}
    finally:
        epp.stop()
        httpd.shutdown()


def test_data_parallel_ranks_metrics_auth_and_drain_through_envoy(tmp_path):
    """One pod address, two data-parallel ranks on two ports (targetPorts): each rank is an endpoint
    `<pod>-rank-<i>` and takes traffic; llm-d.ai/active-ports narrows it to the listed rank. /metrics
    wants a token the API server accepts and a user it allows. SIGTERM: not ready at once, the lease is
    released, requests are still served through the drain window, then epp exits 0."""
    kube = FakeKube(bookmark_interval=1.0)
    group = PodGroup(0)
    ranks = [Pod(free_port(), name=f"rank-{i}") for i in range(2)]
    for r in ranks:
        asyncio.run_coroutine_threadsafe(r.start(), group.loop).result(5)
    ports = [r.port for r in ranks]
    kube.put("inference.networking.k8s.io", "inferencepools", "default", inference_pool("pool", {"app": "dp"}, ports))
    kube.put("", "pods", "default", pod("dp-0", "127.0.0.1", {"app": "dp"}))
    kube.tokens.update({"good": {"username": "prometheus", "groups": ["system:authenticated"]},
                        "other": {"username": "bob", "groups": []}})
    kube.access.add(("prometheus", "/metrics", "get"))
    epp = Epp(str(tmp_path), None, "--pool-name", "pool", "--pool-namespace", "default",
              "--kubeconfig", kube.kubeconfig(str(tmp_path / "kubeconfig")), "--ha-enable-leader-election",
              "--leader-election-retry-period", "200ms", "--drain-timeout", "1500ms")
    envoy = Envoy(str(tmp_path), [MODE], epp.ports["grpc"])
    port = envoy.ports[MODE]
    addresses = [r.address for r in ranks]
    body = b'{"model": "m", "prompt": "hello"}'
    try:
        wait_for(lambda: health(epp.ports["health"], "readiness") == "SERVING", what="leader and ready")
        seen = set()
        for i in range(30):   # distinct prompts: a repeated one would stick to one rank (prefix affinity)
            b = f'{{"model": "m", "prompt": "hello {i}"}}'.encode()
            st, raw, _ = post(port, "/v1/completions", b)
            assert landed_right(st, raw, b, addresses) is None, raw
            seen.add(json.loads(raw)["served_by"])
        assert seen == set(addresses)                                       # both ranks take traffic

        # metrics auth: no token 401, unknown token 401, a user without access 403, an allowed one 200
        def get(token=None):
            conn = http.client.HTTPConnection("127.0.0.1", epp.ports["metrics"], timeout=5)
            try:
                conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
                r = conn.getresponse()
                return r.status, r.read().decode()
            finally:
                conn.close()
        assert get()[0] == 401 and get("nope") == (401, "Unauthorized\n")
        assert get("other") == (403, "Authorization denied for user bob\n")
        st, text = get("good")
        assert st == 200 and 'model_server_pod="dp-0-rank-1"' in text
        sar = [r for r in kube.reviews if r.get("kind") == "SubjectAccessReview"]
        assert sar[-1]["spec"]["nonResourceAttributes"] == {"path": "/metrics", "verb": "get"}

        # only rank 1 is active now
        kube.put("", "pods", "default", pod("dp-0", "127.0.0.1", {"app": "dp"},
                                            annotations={"llm-d.ai/active-ports": f" {ports[1]} "}))
        time.sleep(1.0)
        after = {json.loads(post(port, "/v1/completions", body)[1])["served_by"] for _ in range(10)}
        assert after == {addresses[1]}

        lease = "epp-default-pool.llm-d.ai"                                 # upstream's lease name
        assert kube.get("coordination.k8s.io", "leases", "default", lease)["spec"]["holderIdentity"]
        started = time.monotonic()
        epp.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: health(epp.ports["health"], "readiness") == "NOT_SERVING", timeout=3, what="not ready")
        assert health(epp.ports["health"], "liveness") == "SERVING"
        wait_for(lambda: kube.get("coordination.k8s.io", "leases", "default", lease)["spec"]["holderIdentity"] == "",
                 timeout=3, what="the lease released")
        st, raw, _ = post(port, "/v1/completions", body)                      # still served while draining
        assert st == 200, raw
        assert epp.proc.wait(15) == 0
        assert time.monotonic() - started >= 1.4                              # the drain window was kept
    finally:
        envoy.stop()
        epp.stop()
        for r in ranks:
            asyncio.run_coroutine_threadsafe(r.stop(), group.loop).result(5)
        group.close()
        kube.close()


class _Collector:
    """An OTLP/gRPC trace collector on loopback that keeps every span it receives."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )
        spans, resources = self.spans, self.resources = [], []

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                for rs in request.resource_spans:
                    resources.append({a.key: a.value.string_value for a in rs.resource.attributes})
                    for ss in rs.scope_spans:
                        spans.extend((ss.scope.name, s) for s in ss.spans)
                return trace_service_pb2.ExportTraceServiceResponse()
        from concurrent import futures
        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


def test_tracing_exports_a_span_tree_per_request_over_otlp(tmp_path, pods, monkeypatch):
    collector = _Collector()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "1")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    efile = str(tmp_path / "eps.yaml")
    write_endpoints(efile, pods.pods)
    epp = Epp(str(tmp_path), efile)                          # --tracing is on by default, as upstream
    envoy = Envoy(str(tmp_path), [MODE], epp.ports["grpc"])
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        st, raw, _ = post(envoy.ports[MODE], "/v1/completions", b'{"model": "m", "prompt": "trace me"}',
                          {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        assert st == 200, raw
        wanted = {"gateway.request", "gateway.request_orchestration", "run_scheduler_profile", "filter_endpoints",
                  "llm_d.epp.scoring", "llm_d.epp.scorer.queue-scorer", "pick_endpoints"}
        wait_for(lambda: wanted <= {s.name for _, s in collector.spans}, what=f"spans {wanted}")
    finally:
        envoy.stop()
        epp.stop()
        collector.server.stop(0)
    spans = {s.name: s for _, s in collector.spans if s.trace_id.hex() == trace_id}
    assert wanted <= spans.keys(), "the request's spans continue the caller's trace"
    parent = {name: s.parent_span_id for name, s in spans.items()}
    sid = {name: s.span_id for name, s in spans.items()}
    assert parent["gateway.request"] == bytes.fromhex("00f067aa0ba902b7")
    assert parent["gateway.request_orchestration"] == sid["gateway.request"]
    assert parent["run_scheduler_profile"] == sid["gateway.request_orchestration"]
    for step in ("filter_endpoints", "llm_d.epp.scoring", "pick_endpoints"):
        assert parent[step] == sid["run_scheduler_profile"]
    assert parent["llm_d.epp.scorer.queue-scorer"] == sid["llm_d.epp.scoring"]
    attrs = {a.key: a.value for a in spans["pick_endpoints"].attributes}
    assert attrs["llm_d.epp.picker.top_endpoints"].array_value.values[0].string_value in \
        {p.address for p in pods.pods}
    assert collector.resources[0]["service.name"] == "llm-d-epp"
