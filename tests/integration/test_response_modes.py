"""The two response processing modes through the real Envoy (testbed.envoy's response_body option):
full-duplex body processing keeps the request in epp's in-flight count until the answer ends and counts
its tokens; headers-only (response_body_mode NONE) ends epp's accounting at the response headers and sees
no usage. Both route the same."""
import http.client
import json
import time

import pytest

from testbed.endpoints import write_endpoints
from testbed.envoy import HEADERS_ONLY

from .stack import Envoy, Epp, PodGroup

pytestmark = pytest.mark.envoy
MODE = "FULL_DUPLEX_STREAMED"
RUNNING = "inference_objective_running_requests"
OUT_TOKENS = "inference_objective_output_tokens_count"


@pytest.fixture(scope="module")
def modes(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("response-modes"))
    pods = PodGroup(2, sse_events=3, sse_gap=0.5)   # each answer streams for ~1.5 s after its first event
    efile = f"{tmp}/endpoints.yaml"
    write_endpoints(efile, pods.pods)
    epp = Epp(tmp, efile, "--refresh-metrics-interval", "50ms")
    full = Envoy(tmp, [MODE], epp.ports["grpc"], name="envoy-full")
    headers = Envoy(tmp, [MODE], epp.ports["grpc"], response_body=HEADERS_ONLY, name="envoy-headers")
    yield {"epp": epp, "full": full.ports[MODE], "headers": headers.ports[MODE],
           "pool": [p.address for p in pods.pods]}
    headers.stop()
    full.stop()
    epp.stop()
    pods.close()


def stream(port: int, epp: Epp) -> tuple[dict, float, bytes]:
    """A streamed completion: (its first event, epp's running count while the answer still streams, the rest)."""
    body = json.dumps({"model": "m", "prompt": "where does this go", "stream": True}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/completions", body=body, headers={"content-type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200
        head = r.read1(65536)
        while b"\n\n" not in head:
            head += r.read1(65536)
        running = epp.sample(RUNNING, model_name="m")   # the pod sends its next event 0.5 s later
        rest = r.read()
    finally:
        conn.close()
    return json.loads(head.split(b"\n", 1)[0][6:]), running, head + rest


def settled(epp: Epp, name: str, **labels) -> float:
    """A metric once epp's accounting for the finished streams is done (it lands just after the last byte)."""
    deadline = time.time() + 5
    value = epp.sample(name, **labels)
    while time.time() < deadline:
        time.sleep(0.1)
        again = epp.sample(name, **labels)
        if again == value:
            return value or 0.0
        value = again
    return value or 0.0


def test_full_duplex_holds_the_request_until_the_answer_ends_and_counts_its_tokens(modes):
    epp = modes["epp"]
    tokens = settled(epp, OUT_TOKENS)
    first, running, data = stream(modes["full"], epp)
    assert first["served_by"] in modes["pool"] and first["dest_header"] == first["served_by"]
    assert data.endswith(b"data: [DONE]\n\n")
    assert running == 1
    assert settled(epp, RUNNING, model_name="m") == 0
    assert settled(epp, OUT_TOKENS) == tokens + 1


def test_headers_only_ends_at_the_first_byte_and_sees_no_usage(modes):
    epp = modes["epp"]
    tokens = settled(epp, OUT_TOKENS)
    first, running, data = stream(modes["headers"], epp)
    assert first["served_by"] in modes["pool"] and first["dest_header"] == first["served_by"]
    assert data.endswith(b"data: [DONE]\n\n")
    assert running == 0          # done at the response headers, while the answer still streams
    assert settled(epp, OUT_TOKENS) == tokens   # the usage chunk never reached epp
