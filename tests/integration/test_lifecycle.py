"""epp as a process: start-up errors, health, TLS, reloads, SIGTERM."""
import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from testbed.endpoints import write_endpoints
from testbed.grpc_health import health
from testbed.http1 import post

from .stack import Envoy, Epp, PodGroup, landed_right

pytestmark = pytest.mark.envoy


def test_invalid_endpoints_file_fails_start_with_the_reason(tmp_path):
    f = tmp_path / "eps.yaml"
    f.write_text('endpoints: [{address: "not-an-ip:80"}]')
    r = subprocess.run([sys.executable, "-m", "epp", "--endpoints-file", str(f), "--secure-serving=false",
                        "--bind-address", "127.0.0.1", "--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", "0"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1   # as upstream: a start-up failure exits 1
    assert "not an IP address" in r.stderr


@pytest.fixture
def pods():
    group = PodGroup(2, sse_events=5, sse_gap=0.3)
    yield group
    group.close()


def test_health_tls_reload_and_graceful_sigterm(tmp_path, pods):
    efile = str(tmp_path / "eps.yaml")
    write_endpoints(efile, pods.pods[:1])
    epp = Epp(str(tmp_path), efile, "--secure-serving=true", "--shutdown-grace-period", "10s")
    envoy = Envoy(str(tmp_path), ["FULL_DUPLEX_STREAMED"], epp.ports["grpc"], epp_tls=True)
    port = envoy.ports["FULL_DUPLEX_STREAMED"]
    try:
        for service in ("", "liveness", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor"):
            assert health(epp.ports["health"], service) == "SERVING"
        # over TLS (self-signed certificate) the request lands on the only pod
        b = b'{"model": "m", "prompt": "hello"}'
        st, raw, _ = post(port, "/v1/completions", b)
        assert landed_right(st, raw, b, [pods.pods[0].address]) is None

        # the file changes: the second pod joins; a broken file later keeps it
        write_endpoints(efile, pods.pods)
        deadline = time.time() + 10
        while epp.sample("inference_pool_ready_pods") != 2 and time.time() < deadline:
            time.sleep(0.2)
        assert epp.sample("inference_pool_ready_pods") == 2
        with open(efile, "w") as f:
            f.write("endpoints: [")
        time.sleep(2.5)
        assert epp.sample("inference_pool_ready_pods") == 2
        assert "keeping the last good set of 2" in epp.output()

        # SIGTERM while a slow streamed answer (5 events 0.3 s apart) is in flight: it completes, epp exits 0
        result = {}

        def slow():
            sb = b'{"model": "m", "prompt": "hi", "stream": true}'
            result["r"] = post(port, "/v1/completions", sb, timeout=20)
        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.4)
        started = time.time()
        code = epp.stop(signal.SIGTERM)
        t.join(20)
        assert code == 0
        assert time.time() - started < 10
        st, raw, _ = result["r"]
        assert st == 200 and raw.endswith(b"data: [DONE]\n\n") and raw.count(b"data: ") == 7
    finally:
        envoy.stop()
        epp.stop(signal.SIGKILL)


def test_empty_pool_answers_503_itself(tmp_path):
    efile = str(tmp_path / "eps.yaml")
    write_endpoints(efile, [])
    epp = Epp(str(tmp_path), efile)
    envoy = Envoy(str(tmp_path), ["FULL_DUPLEX_STREAMED"], epp.ports["grpc"])
    try:
        st, raw, _ = post(envoy.ports["FULL_DUPLEX_STREAMED"], "/v1/completions", b'{"model": "m", "prompt": "x"}')
        assert st == 503
        assert "no ready endpoint" in json.loads(raw)["error"]["message"]
        assert health(epp.ports["health"], "readiness") == "SERVING"  # the (empty) pool is known
    finally:
        envoy.stop()
        epp.stop()
