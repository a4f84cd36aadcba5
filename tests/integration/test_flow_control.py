"""Flow control end to end: the real Envoy (full duplex), epp with the flowControl gate, a real
vllm_sim pod saturated by a long request. The concurrency detector (maxConcurrency 1) makes
saturation exact: while one request runs, every other one waits in epp. Each outcome is seen by the
client as upstream answers it (status, x-llm-d-request-dropped-reason), and nothing hangs."""
from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time

import pytest


from testbed.children import Children
from testbed.http1 import post
from testbed.ports import free_port
from testbed.wait import wait_port

from .stack import Envoy, Epp

pytestmark = pytest.mark.envoy
MODE = "FULL_DUPLEX_STREAMED"
REASON = "x-llm-d-request-dropped-reason"
GATE = """apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: concurrency-detector
  parameters: {{maxConcurrency: 1}}
- type: queue-scorer
{plugins}
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: queue-scorer}}]
flowControl:
  saturationDetector: {{pluginRef: concurrency-detector}}
{flow}
"""


def config(flow: str = "", plugins: str = "") -> str:
    indent = lambda t: "\n".join("  " + line for line in t.strip().splitlines())  # noqa: E731
    return GATE.format(plugins=plugins.strip(), flow=indent(flow) if flow.strip() else "")


def body(tokens: int, tag: str = "") -> bytes:
    return json.dumps({"model": "m", "prompt": f"request {tag}: tell me a story", "max_tokens": tokens,
                       "ignore_eos": True}).encode()


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("flow"))
    kids = Children(tmp)
    port = free_port()
    proc = kids.start("sim", [sys.executable, "-m", "vllm_sim", "--model", "m", "--port", str(port),
                              "--time-scale", "1", "--seed", "1"])
    wait_port(port, 60, proc, "vllm_sim")
    efile = os.path.join(tmp, "endpoints.yaml")
    with open(efile, "w") as f:
        f.write(f'endpoints:\n- name: sim-0\n  address: "127.0.0.1:{port}"\n  labels: {{app: sim}}\n')
    empty = os.path.join(tmp, "empty.yaml")
    with open(empty, "w") as f:
        f.write("endpoints: []\n")

    class Pod:
        pass
    p = Pod()
    p.tmp, p.port, p.efile, p.empty = tmp, port, efile, empty
    yield p
    kids.stop_all()


class WideEnvoy(Envoy):
    """Envoy whose clusters take 20,000 concurrent requests (its circuit breakers default to 1,024, so
    Envoy would shed the flood itself before epp saw it)."""

    def __init__(self, tmp: str, epp_port: int) -> None:
        import subprocess

        from testbed.envoy import bootstrap, find_envoy
        self.ports = {MODE: free_port()}
        cfg = bootstrap(free_port(), self.ports, epp_port)
        wide = {"thresholds": [{"max_connections": 20000, "max_pending_requests": 20000, "max_requests": 20000}]}
        for c in cfg["static_resources"]["clusters"]:
            c["circuit_breakers"] = wide
        path = os.path.join(tmp, "envoy-wide.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        with open(os.path.join(tmp, "envoy-wide.log"), "w") as out:
            self.proc = subprocess.Popen([find_envoy(), "-c", path, "--use-dynamic-base-id", "--log-level", "warn"],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        wait_port(self.ports[MODE], 30, self.proc)


class Stack:
    """epp with a config and the Envoy in front of it; requests in threads."""

    def __init__(self, pod, cfg: str, *flags: str, efile: str | None = None, name: str = "epp",
                 wide: bool = False) -> None:
        self.pod = pod
        self.efile = efile or pod.efile
        self.flags = ("--config-text", cfg, "--refresh-metrics-interval", "50ms", *flags)
        self.epp = Epp(pod.tmp, self.efile, *self.flags, name=name)
        self.envoy = WideEnvoy(pod.tmp, self.epp.ports["grpc"]) if wide else Envoy(pod.tmp, [MODE], self.epp.ports["grpc"])
        self.port = self.envoy.ports[MODE]
        self.pool = cf.ThreadPoolExecutor(64)

    def send(self, tokens: int = 3, headers: dict | None = None, tag: str = "", timeout: float = 30):
        """A future of (status, body, headers, seconds)."""
        def go():
            t = time.monotonic()
            st, raw, hs = post(self.port, "/v1/completions", body(tokens, tag), headers, timeout=timeout)
            return st, raw, hs, time.monotonic() - t
        return self.pool.submit(go)

    def queued(self) -> float:
        return self.epp.sample("llm_d_epp_flow_control_queue_size") or 0.0

    def wait_queued(self, n: int, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while self.queued() < n:
            assert time.monotonic() < end, f"{self.queued()} queued, waited for {n}"
            time.sleep(0.02)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.envoy.stop()
        self.epp.stop()


@pytest.fixture
def stack(pod):
    made = []

    def make(cfg: str = config(), *flags, **kw) -> Stack:
        s = Stack(pod, cfg, *flags, **kw)
        made.append(s)
        return s
    make.pod = pod
    yield make
    for s in made:
        s.close()


def blocker(s: Stack, tokens: int = 120, headers: dict | None = None):
    """A long request that holds the pod (maxConcurrency 1) for about `tokens` x 7 ms."""
    f = s.send(tokens, headers, tag="blocker")
    end = time.monotonic() + 10
    while (s.epp.sample("llm_d_epp_flow_control_requests_total", outcome="Dispatched") or 0) < 1:
        assert time.monotonic() < end, "the blocker was not dispatched"
        time.sleep(0.01)
    return f


def test_unsaturated_requests_pass_and_both_metric_families_are_written(stack):
    s = stack()
    st, raw, hs, _ = s.send().result()
    assert st == 200, raw[:200]
    assert s.epp.sample("llm_d_epp_flow_control_requests_total", outcome="Dispatched", priority="0") == 1
    assert s.epp.sample("inference_extension_flow_control_request_queue_duration_seconds_count",
                        outcome="Dispatched", fairness_id="default-flow") == 1
    assert s.epp.sample("llm_d_epp_flow_control_pool_saturation", stage="effective") is not None


def test_strict_priority_across_bands(stack):
    s = stack(config(), "--objective", "gold=10", "--objective", "batch=-1")
    first = blocker(s)
    order, lock = [], threading.Lock()
    futs = []
    for name, objective in [("batch-1", "batch"), ("normal-1", None), ("batch-2", "batch"), ("gold-1", "gold"),
                            ("normal-2", None), ("gold-2", "gold")]:
        f = s.send(3, {"x-gateway-inference-objective": objective} if objective else None, tag=name)
        f.add_done_callback(lambda _, n=name: (lock.acquire(), order.append(n), lock.release()))
        futs.append(f)
        s.wait_queued(len(futs))           # each is queued before the next is sent
    assert first.result()[0] == 200
    assert all(f.result()[0] == 200 for f in futs)
    assert order == ["gold-1", "gold-2", "normal-1", "normal-2", "batch-1", "batch-2"]


@pytest.mark.parametrize("policy", ["round-robin-fairness-policy", "global-strict-fairness-policy"])
def test_fairness_between_a_flooding_tenant_and_a_light_one(stack, policy):
    s = stack(config(f"defaultPriorityBand: {{fairnessPolicyRef: {policy}}}", f"- type: {policy}"))
    first = blocker(s)
    order, lock = [], threading.Lock()
    futs = []
    for i in range(8):
        f = s.send(3, {"x-llm-d-inference-fairness-id": "flood"}, tag=f"a{i}")
        f.add_done_callback(lambda _, n=f"a{i}": (lock.acquire(), order.append(n), lock.release()))
        futs.append(f)
    s.wait_queued(8)
    for i in range(2):   # the light tenant, by the older header name
        f = s.send(3, {"x-gateway-inference-fairness-id": "light"}, tag=f"b{i}")
        f.add_done_callback(lambda _, n=f"b{i}": (lock.acquire(), order.append(n), lock.release()))
        futs.append(f)
        s.wait_queued(9 + i)
    assert first.result()[0] == 200 and all(f.result()[0] == 200 for f in futs)
    light = [order.index("b0"), order.index("b1")]
    if policy == "round-robin-fairness-policy":
        assert light == [1, 3], order          # a turn each: a, b, a, b, a, ...
    else:
        assert light == [8, 9], order          # one queue, FCFS: behind the whole flood


def test_ttl_expiry_answers_429(stack):
    s = stack(config("defaultRequestTTL: 400ms"))
    first = blocker(s)
    st, raw, hs, took = s.send(3).result()
    assert (st, hs.get(REASON)) == (429, "rejected-ttl-expired"), raw[:300]
    assert b"request timed out in queue" in raw
    assert 0.35 <= took < 3.0
    assert first.result()[0] == 200
    assert s.epp.sample("llm_d_epp_flow_control_requests_total", outcome="EvictedTTL") == 1


def test_capacity_overflow_answers_429_at_once(stack):
    s = stack(config("maxRequests: 1"))
    first = blocker(s)
    waiting = s.send(3)
    s.wait_queued(1)
    st, raw, hs, took = s.send(3).result()
    assert (st, hs.get(REASON)) == (429, "rejected-saturated"), raw[:300]
    assert took < 2.0
    assert waiting.result()[0] == 200 and first.result()[0] == 200


def test_no_endpoints_answers_503(stack):
    s = stack(config("noEndpointRequestTTL: 300ms\nmaxRequests: 1"), efile=stack.pod.empty)
    waiting = s.send(3)                     # an empty pool reads saturated: it waits for an endpoint
    s.wait_queued(1)
    st, raw, hs, took = s.send(3).result()  # over the cap while the pool is empty
    assert (st, hs.get(REASON)) == (503, "rejected-no-endpoints") and took < 2.0
    st, raw, hs, took = waiting.result()
    assert (st, hs.get(REASON)) == (503, "rejected-no-endpoints"), raw[:300]
    assert b"no endpoints are available" in raw
    assert s.epp.sample("llm_d_epp_flow_control_requests_total", outcome="EvictedNoEndpoints") == 1
    assert s.epp.sample("llm_d_epp_flow_control_requests_total", outcome="RejectedNoEndpoints") == 1


def _pod_requests(pod) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", pod.port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_success_total"))


@pytest.mark.parametrize("server", ["native", "grpcio"])
def test_a_client_leaving_while_queued_leaves_the_queue_at_once(stack, server):
    s = stack(config(), "--ext-proc-server", server)
    first = blocker(s, 100)
    before = _pod_requests(s.pod)
    sock = socket.create_connection(("127.0.0.1", s.port))
    b = body(3, "leaver")
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                 + f"content-length: {len(b)}\r\n\r\n".encode() + b)
    s.wait_queued(1)
    sock.close()
    t = time.monotonic()
    while s.queued() > 0:
        assert time.monotonic() - t < 0.5, "the request stayed queued after its client left"
        time.sleep(0.01)
    assert s.epp.sample("llm_d_epp_flow_control_requests_total", outcome="EvictedContextCancelled") == 1
    assert first.result()[0] == 200
    assert s.send(3).result()[0] == 200
    assert _pod_requests(s.pod) - before == 2     # the blocker and the last one; never the leaver


def test_shutdown_fails_queued_requests_fast_and_a_restart_serves(stack):
    s = stack(config())
    first = blocker(s, 150)
    queued = [s.send(3, tag=f"q{i}") for i in range(5)]
    s.wait_queued(5)
    t = time.monotonic()
    s.epp.proc.send_signal(signal.SIGTERM)
    results = [f.result() for f in queued]
    assert all((st, hs.get(REASON)) == (503, "rejected-shutting-down") for st, _, hs, _ in results), \
        [(st, raw[:100]) for st, raw, _, _ in results]
    assert time.monotonic() - t < 2.0
    assert first.result()[0] == 200            # in flight: finished within the grace period
    assert s.epp.proc.wait(20) == 0
    # a new epp on the same port behind the same Envoy
    s.epp = Epp(s.pod.tmp, s.efile, *s.flags, name="epp-restarted", ports=s.epp.ports)
    end = time.monotonic() + 15
    while True:
        st = s.send(3).result()[0]
        if st == 200:
            break
        assert time.monotonic() < end, f"no answer after the restart (last {st})"
        time.sleep(0.2)


def test_a_killed_epp_fails_queued_requests_and_none_hangs(stack):
    s = stack(config())
    first = blocker(s, 150)
    queued = [s.send(3, tag=f"q{i}") for i in range(5)]
    s.wait_queued(5)
    t = time.monotonic()
    s.epp.proc.send_signal(signal.SIGKILL)
    statuses = [f.result(timeout=10)[0] for f in queued]
    assert all(st >= 500 for st in statuses), statuses
    assert time.monotonic() - t < 5.0
    first.result(timeout=10)


@pytest.mark.parametrize("server", ["native", "grpcio"])
def test_eviction_revokes_an_in_flight_sheddable_request(stack, server):
    s = stack(config("enableEviction: true"), "--objective", "batch=-1", "--ext-proc-server", server)
    victim = blocker(s, 300, {"x-gateway-inference-objective": "batch"})
    t = time.monotonic()
    st, raw, hs, _ = s.send(3).result()         # priority 0 waits: the sheddable one is revoked for it
    assert st == 200, raw[:200]
    vst, vraw, vhs, _ = victim.result()
    assert (vst, vhs.get(REASON), vraw) == (429, "evicted", b"request evicted by flow control")
    assert time.monotonic() - t < 1.5          # well before the victim's 2 s would have ended
    assert s.epp.sample("llm_d_epp_flow_control_revocations_total", outcome="confirmed") == 1


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def _flood(port: int, n: int, payload: bytes) -> list[tuple[int, bytes]]:
    """n concurrent requests, each on its own connection; their statuses and the start of each answer."""
    import asyncio
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode() + payload)
    opening = asyncio.Semaphore(256)

    async def one() -> tuple[int, bytes]:
        async with opening:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(head)
            await w.drain()
        try:
            line = await asyncio.wait_for(r.readline(), 60)
            if not line:
                return 0, b""
            rest = await asyncio.wait_for(r.read(600), 10)
            return int(line.split()[1]), rest
        finally:
            w.close()
    return await asyncio.gather(*(one() for _ in range(n)))


def test_ten_thousand_queued_requests_with_bounded_memory_then_a_restart(stack):
    """10,000 requests wait at once (no TTL, the pod held by a long request): epp's memory per queued
    request is bounded; SIGTERM answers every one of them at once (503 rejected-shutting-down)."""
    import asyncio
    n = 10_000
    s = stack(config("defaultRequestTTL: 0s\npriorityBands: [{priority: 0, maxRequests: 20000}]"), wide=True)
    assert s.send(1).result()[0] == 200        # warm: the code paths have run once
    first = blocker(s, 3000)                   # holds the pod ~20 s: nothing dispatches meanwhile
    base = _rss_kib(s.epp.proc.pid)
    result = {}

    def flood():
        result["statuses"] = asyncio.run(_flood(s.port, n, body(3, "flood")))
    t = threading.Thread(target=flood)
    t.start()
    s.wait_queued(n, timeout=60)
    per_request = (_rss_kib(s.epp.proc.pid) - base) * 1024 / n
    t0 = time.monotonic()
    s.epp.proc.send_signal(signal.SIGTERM)
    t.join(60)
    took = time.monotonic() - t0
    statuses = [st for st, _ in result["statuses"]]
    odd = [rest for st, rest in result["statuses"] if st != 503][:3]
    print(f"{n} queued: {per_request:.0f} bytes of epp RSS each; all answered {took:.1f}s after SIGTERM")
    assert per_request < 16 * 1024
    if statuses.count(503) != n:
        with open(os.path.join(s.pod.tmp, "envoy-wide.log")) as f:
            print("envoy:", f.read()[-3000:])
        with open(s.epp.log, errors="replace") as f:
            print("epp:", f.read()[-3000:])
    assert statuses.count(503) == n, ({st: statuses.count(st) for st in set(statuses)}, odd)
    assert took < 10
    first.cancel()
