"""Through the real Envoy in every request-body mode: requests land where epp said, byte for byte."""
import concurrent.futures as cf
import hashlib
import http.client
import json
import random
import time

import pytest

from testbed.http1 import post

from .conftest import MODES
from .stack import landed_right

pytestmark = pytest.mark.envoy


def body(n: int, rng: random.Random, **extra) -> bytes:
    text = "".join(rng.choices("abcdefgh \u00e9\u65e5\U0001F642", k=n))
    # separators no serializer emits: an EPP that re-encodes the body is caught
    return ('{"model" :"m",\n\t"prompt" : ' + json.dumps(text, ensure_ascii=False) + "".join(
        f',"{k}":{json.dumps(v)}' for k, v in extra.items()) + "}").encode()


@pytest.mark.parametrize("mode", MODES)
def test_requests_land_right_in_every_mode(stack, mode):
    rng = random.Random(mode)
    for i in range(10):
        b = body(300, rng)
        st, raw, hs = post(stack.envoy.ports[mode], "/v1/completions", b)
        assert landed_right(st, raw, b, stack.pool) is None, landed_right(st, raw, b, stack.pool)
    chat = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi \u00e9"}]}, ensure_ascii=False).encode()
    st, raw, _ = post(stack.envoy.ports[mode], "/v1/chat/completions", chat)
    assert landed_right(st, raw, chat, stack.pool) is None


@pytest.mark.parametrize("mode", MODES)
def test_bodies_of_a_mebibyte_and_more(stack, mode):
    b = body(1 << 20, random.Random(1))
    assert len(b) > 1 << 20
    st, raw, _ = post(stack.envoy.ports[mode], "/v1/completions", b, timeout=30)
    assert landed_right(st, raw, b, stack.pool) is None


@pytest.mark.parametrize("mode", ["FULL_DUPLEX_STREAMED", "BUFFERED"])
@pytest.mark.parametrize("raw,status,fragment", [
    (b"{not json", 400, "not valid JSON"),
    (b'{"prompt": "x"}', 400, "'model' is required"),
    (b'{"model": 1, "prompt": "x"}', 400, "'model' must be a string"),
    (b"", 400, "empty"),
])
def test_bad_input_is_refused_and_no_backend_sees_it(stack, mode, raw, status, fragment):
    before = stack.pods.hits()
    st, answer, hs = post(stack.envoy.ports[mode], "/v1/completions", raw)
    assert st == status, answer
    assert fragment in json.loads(answer)["error"]["message"]
    assert hs["content-type"] == "application/json"
    time.sleep(0.05)
    assert stack.pods.hits() == before


def test_unsupported_path_is_400(stack):
    # no configured parser (openai, anthropic, vllmhttp by default) claims it: upstream's 400
    st, answer, _ = post(stack.envoy.ports["FULL_DUPLEX_STREAMED"], "/v1/audio/speech", b'{"model": "m", "input": "x"}')
    assert st == 400 and "no parser registered matching path suffix" in json.loads(answer)["error"]["message"]


def test_get_without_body_is_routed(stack):
    conn = http.client.HTTPConnection("127.0.0.1", stack.envoy.ports["FULL_DUPLEX_STREAMED"], timeout=10)
    conn.request("GET", "/v1/models")
    r = conn.getresponse()
    report = json.loads(r.read())
    assert r.status == 200 and report["served_by"] in stack.pool and report["dest_header"] == report["served_by"]


def test_client_routing_headers_never_reach_a_backend(stack):
    b = body(100, random.Random(2))
    headers = [("x-gateway-destination-endpoint", "127.0.0.1:1"), ("x-gateway-destination-endpoint", "127.0.0.1:2"),
               ("x-prefiller-host-port", "127.0.0.1:3")]
    for mode in ("FULL_DUPLEX_STREAMED", "BUFFERED"):
        st, raw, _ = post(stack.envoy.ports[mode], "/v1/completions", b, headers)
        assert landed_right(st, raw, b, stack.pool) is None
        assert json.loads(raw)["prefiller_header"] is None


def test_sse_is_streamed_as_it_comes_and_usage_is_counted(stack):
    b = body(100, random.Random(3), stream=True)
    before = stack.epp.sample("inference_objective_output_tokens_count") or 0
    conn = http.client.HTTPConnection("127.0.0.1", stack.envoy.ports["FULL_DUPLEX_STREAMED"], timeout=10)
    conn.request("POST", "/v1/completions", body=b, headers={"content-type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    assert "x-epp-decision" in {k.lower() for k, _ in r.getheaders()}
    arrivals = []
    while chunk := r.read1(65536):
        arrivals.append((time.monotonic(), chunk))
    data = b"".join(c for _, c in arrivals)
    assert data.endswith(b"data: [DONE]\n\n") and data.count(b"data: ") == 7
    assert arrivals[-1][0] - arrivals[0][0] > 0.15  # the pod spread 5 events 50 ms apart
    first = json.loads(data.split(b"\n", 1)[0][6:])
    assert first["dest_header"] == first["served_by"]
    deadline = time.time() + 5
    while (stack.epp.sample("inference_objective_output_tokens_count") or 0) < before + 1 and time.time() < deadline:
        time.sleep(0.1)
    assert stack.epp.sample("inference_objective_output_tokens_count") >= before + 1


def test_a_hundred_and_twenty_requests_in_flight(stack):
    rng = random.Random(4)
    bodies = [body(200, rng, stream=True) for _ in range(120)]

    def one(b):
        conn = http.client.HTTPConnection("127.0.0.1", stack.envoy.ports["FULL_DUPLEX_STREAMED"], timeout=30)
        try:
            conn.request("POST", "/v1/completions", body=b, headers={"content-type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            first = json.loads(data.split(b"\n", 1)[0][6:])
            ok = (r.status == 200 and first["served_by"] == first["dest_header"] and first["served_by"] in stack.pool
                  and first["body_sha256"] == hashlib.sha256(b).hexdigest() and data.endswith(b"[DONE]\n\n"))
            return ok
        finally:
            conn.close()

    with cf.ThreadPoolExecutor(120) as ex:
        results = list(ex.map(one, bodies))
    assert all(results), f"{results.count(False)} of 120 failed"
    deadline = time.time() + 5
    while stack.epp.sample("inference_objective_running_requests", model_name="m") != 0 and time.time() < deadline:
        time.sleep(0.1)
    assert stack.epp.sample("inference_objective_running_requests", model_name="m") == 0


def test_client_that_goes_away_frees_the_request(stack):
    b = body(100, random.Random(5), stream=True)
    conn = http.client.HTTPConnection("127.0.0.1", stack.envoy.ports["FULL_DUPLEX_STREAMED"], timeout=10)
    conn.request("POST", "/v1/completions", body=b, headers={"content-type": "application/json"})
    r = conn.getresponse()
    r.read1(100)
    conn.sock.close()  # mid-stream
    deadline = time.time() + 5
    while stack.epp.sample("inference_objective_running_requests", model_name="m") != 0 and time.time() < deadline:
        time.sleep(0.1)
    assert stack.epp.sample("inference_objective_running_requests", model_name="m") == 0


def test_pool_metrics(stack):
    assert stack.epp.sample("inference_pool_ready_pods") == 3
    assert stack.epp.sample("inference_objective_request_total") >= 1
    assert stack.epp.sample("inference_extension_scheduler_e2e_duration_seconds_count") >= 1
    assert stack.epp.sample("inference_extension_plugin_duration_seconds_count", plugin_type="queue-scorer") >= 1
    assert stack.epp.sample("inference_extension_prefix_indexer_size") > 0


def test_sheddable_requests_get_429_only_while_the_pool_is_saturated(stack):
    def set_metrics(waiting, kv):
        for pod in stack.pods.pods:
            st, _, _ = post(int(pod.address.rsplit(":", 1)[1]), "/admin/metrics", json.dumps({"waiting": waiting, "kv": kv}).encode())
            assert st == 200
    b = b'{"model": "m", "prompt": "batch job"}'
    port = stack.envoy.ports["FULL_DUPLEX_STREAMED"]
    try:
        set_metrics(20, 0.95)
        time.sleep(0.3)
        before = stack.pods.hits()
        st, raw, _ = post(port, "/v1/completions", b, {"x-gateway-inference-objective": "batch"})
        assert st == 429 and "sheddable" in json.loads(raw)["error"]["message"]
        assert stack.pods.hits() == before
        st, raw, _ = post(port, "/v1/completions", b)  # not sheddable: served even when saturated
        assert landed_right(st, raw, b, stack.pool) is None
    finally:
        set_metrics(0, 0.0)
        time.sleep(0.3)
    st, raw, _ = post(port, "/v1/completions", b, {"x-gateway-inference-objective": "batch"})
    assert landed_right(st, raw, b, stack.pool) is None
