"""The pinned benchmark (`hack/bench.sh pinned`): its C backend on the wire, and a quick run end to end
(direct, Envoy, Envoy + epp at 16 KB, 1 s runs, and the streamed case): rows with traffic, no request
failed. No performance assertion."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from hack.bench import cbackend
from testbed.children import Children
from testbed.ports import free_port

pytestmark = [pytest.mark.envoy, pytest.mark.slow]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def exchange(sock: socket.socket, request: bytes) -> tuple[bytes, bytes]:
    """Sends one request, reads one response (Content-Length or chunked): (head, body as sent)."""
    sock.sendall(request)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    m = re.search(rb"content-length: (\d+)", head, re.I)
    if m:
        n = int(m.group(1))
        while len(rest) < n:
            rest += sock.recv(65536)
        return head, rest
    while not rest.endswith(b"0\r\n\r\n"):
        rest += sock.recv(65536)
    return head, rest


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("cbackend"))
    kids = Children(tmp)
    binary = cbackend.compile_backend(tmp)
    plain, sse = free_port(), free_port()
    cbackend.start(kids, "plain", binary, [plain])
    cbackend.start(kids, "sse", binary, [sse], sse=5, sse_gap_us=200)
    yield plain, sse
    kids.stop_all()


def test_backend_reads_any_body_keeps_alive_and_streams(backend):
    plain, sse = backend
    big = b'{"model": "m", "prompt": "' + b"x" * (1 << 20) + b'"}'
    with socket.create_connection(("127.0.0.1", plain)) as s:
        head, body = exchange(s, b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(big), big))
        assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["usage"]["prompt_tokens"] > (1 << 18)
        # the same connection, a chunked body (what Envoy sends after ext_proc streamed it)
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (b'{"model": "m",', b' "prompt": "hi"}')) + b"0\r\n\r\n"
        head, body = exchange(s, b"POST /v1/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n" + chunked)
        assert json.loads(body)["choices"][0]["text"] == "ok"
        head, body = exchange(s, b"GET /metrics HTTP/1.1\r\n\r\n")
        for gauge in (b"vllm:num_requests_waiting", b"vllm:num_requests_running", b"vllm:kv_cache_usage_perc"):
            assert gauge in body
        head, body = exchange(s, b"GET /health HTTP/1.1\r\n\r\n")
        assert body == b"{}"
        head, body = exchange(s, b"GET /stats HTTP/1.1\r\n\r\n")
        assert json.loads(body) == {"completions": 2, "render": 0, "metrics": 1, "health": 1}
    with socket.create_connection(("127.0.0.1", sse)) as s:
        for _ in range(2):   # keep-alive after a stream
            head, raw = exchange(s, b'POST /v1/completions HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}')
            assert b"text/event-stream" in head and b"transfer-encoding: chunked" in head.lower()
            events = [e for e in re.sub(rb"\r\n[0-9a-f]+\r\n", b"", b"\r\n" + raw).split(b"\n\n") if e.strip()]
            assert len(events) == 6 and events[-1] == b"data: [DONE]"
            assert json.loads(events[-2][6:])["usage"]["completion_tokens"] == 5


def test_quick_run(tmp_path):
    out = tmp_path / "pinned"
    p = subprocess.run([sys.executable, "-m", "hack.bench", "pinned", "--quick", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert {r["config"] for r in res["summary"]} == {"direct", "envoy", "epp"}
    for r in res["summary"]:
        assert r["rps_c16"] > 0 and r["p50_ms_c1"] > 0 and r["failed"] == 0, r
    assert res["runs"] and all(r["failed"] == 0 and r["requests"] > 0 for r in res["runs"])
    epp = next(r for r in res["summary"] if r["config"] == "epp")
    assert epp["cpu_pct_c16"]["epp"] > 0 and epp["cpu_pct_c16"]["envoy"] > 0
    sse = {r["config"]: r for r in res["sse"]}
    assert set(sse) == {"envoy", "epp"} and sse["epp"]["failed"] == 0
    assert sse["epp"]["ext_proc_msgs_per_req"] > 5   # the answer's chunks went through epp
    lines = (out / "report.md").read_text().splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("| configuration | prompt | req/s c=16"))
    rows = []
    for ln in lines[head + 2:]:      # the main table: after its header and separator, up to a blank line
        if not ln.startswith("|"):
            break
        rows.append(ln)
    assert [ln.split("|")[1].strip() for ln in rows] == ["direct", "envoy", "epp"]
    for ln in rows:
        rps = ln.split("|")[3].split("(")[0].strip().replace(",", "")   # "(wrk-bound)" may follow
        assert float(rps) > 0, ln
    assert "taskset -c 1 wrk" in p.stdout and "taskset -c 0" in p.stdout
