"""epp as a process on a (fake) cluster, through the real Envoy: pods found from an InferencePool,
objectives shedding, model rewrites on the way in and out, and HA readiness by Lease."""
import asyncio
import hashlib
import json
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from testbed.http1 import post
from testbed.ports import free_port
from testbed.standin_pod import Pod
from testbed.wait import wait_for

from .fake_kube import FakeKube, inference_pool, pod
from .stack import Envoy, Epp, PodGroup

pytestmark = pytest.mark.envoy
MODE = "FULL_DUPLEX_STREAMED"
POOLS = ("inference.networking.k8s.io", "inferencepools")
X = "inference.networking.x-k8s.io"


class Cluster:
    """Stand-in pods on their own loopback IPs (127.0.0.2, .3, ...) sharing one port, as pods share a
    targetPort, registered as Pods of an InferencePool in the fake API server."""

    def __init__(self, tmp, n: int) -> None:
        self.kube = FakeKube(bookmark_interval=1.0)
        self.kubeconfig = self.kube.kubeconfig(f"{tmp}/kubeconfig")
        self.port = free_port()
        self.group = PodGroup(0)
        self.pods = []
        for i in range(n):
            p = Pod(self.port, name=f"vllm-{i}", host=f"127.0.0.{i + 2}")
            asyncio.run_coroutine_threadsafe(p.start(), self.group.loop).result(5)
            self.pods.append(p)
        self.kube.put(*POOLS, "default", inference_pool("pool", {"app": "vllm"}, [self.port]))
        for i, p in enumerate(self.pods):
            self.set_pod(i, ready=True)

    def set_pod(self, i: int, ready: bool) -> None:
        self.kube.put("", "pods", "default", pod(f"vllm-{i}", f"127.0.0.{i + 2}", {"app": "vllm"}, ready=ready))

    def close(self) -> None:
        for p in self.pods:
            asyncio.run_coroutine_threadsafe(p.stop(), self.group.loop).result(5)
        self.group.close()
        self.kube.close()


def start(tmp, cluster, *extra, name="epp"):
    return Epp(tmp, None, "--pool-name", "pool", "--pool-namespace", "default", "--kubeconfig", cluster.kubeconfig,
               "--refresh-metrics-interval", "50ms", "--drain-timeout=0s", "--metrics-endpoint-auth=false", *extra,
               name=name)


def ready(port: int) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=3)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        except grpc.RpcError as e:
            return e.code().name


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(str(tmp_path), 3)
    yield c
    c.close()


def test_pool_discovery_objectives_and_rewrites_through_envoy(tmp_path, cluster):
    epp = start(str(tmp_path), cluster)
    envoy = Envoy(str(tmp_path), [MODE], epp.ports["grpc"])
    port = envoy.ports[MODE]
    addresses = {p.address for p in cluster.pods}
    try:
        wait_for(lambda: ready(epp.ports["health"]) == "SERVING", what="epp ready")
        body = json.dumps({"model": "m", "prompt": "hello"}).encode()
        # distinct prompts: the same short prompt is one (partial) prefix block and would stick to one pod
        seen = set()
        for i in range(30):
            st, raw, _ = post(port, "/v1/completions", json.dumps({"model": "m", "prompt": f"{i} hello"}).encode())
            assert st == 200, raw
            seen.add(json.loads(raw)["served_by"])
        assert seen <= addresses and len(seen) >= 2

        # a pod turns unready: within a second nothing more goes there
        cluster.set_pod(0, ready=False)
        time.sleep(1.0)
        after = {json.loads(post(port, "/v1/completions", json.dumps({"model": "m", "prompt": f"{i} hi"}).encode())[1])[
            "served_by"] for i in range(30)}
        assert cluster.pods[0].address not in after and after

        # an InferenceObjective makes a class of traffic sheddable: refused while the pool is saturated
        cluster.kube.put(X, "inferenceobjectives", "default",
                         {"metadata": {"name": "batch"}, "spec": {"priority": -1, "poolRef": {"name": "pool"}}})
        for p in cluster.pods:
            p.waiting = 50.0
        time.sleep(1.0)
        st, raw, _ = post(port, "/v1/completions", body, {"x-gateway-inference-objective": "batch"})
        assert st == 429 and b"sheddable" in raw
        assert post(port, "/v1/completions", body)[0] == 200        # default priority still served
        for p in cluster.pods:
            p.waiting = 0.0

        # an InferenceModelRewrite: the server is asked for the new model, the client sees its own name
        cluster.kube.put(X, "inferencemodelrewrites", "default", {"metadata": {"name": "canary"}, "spec": {
            "poolRef": {"name": "pool"},
            "rules": [{"matches": [{"model": {"value": "m"}}], "targets": [{"modelRewrite": "m-v2-longer-name"}]}]}})
        time.sleep(1.0)
        st, raw, hs = post(port, "/v1/completions", body)
        r = json.loads(raw)
        assert st == 200 and r["server_model"] == "m-v2-longer-name" and r["model"] == "m"
        sent = json.dumps({"model": "m-v2-longer-name", "prompt": "hello"}, separators=(",", ":")).encode()
        assert r["body_sha256"] == hashlib.sha256(sent).hexdigest()          # the body was rewritten whole
        stream = json.dumps({"model": "m", "prompt": "hi", "stream": True}).encode()
        st, raw, _ = post(port, "/v1/completions", stream)
        frames = [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: {")]
        assert frames[0]["model"] == "m" and frames[0]["server_model"] == "m-v2-longer-name"
        assert b'"model": "m-v2-longer-name"' not in raw
    finally:
        envoy.stop()
        epp.stop()


def test_ha_only_the_leader_is_ready(tmp_path, cluster):
    lease = ("--ha-enable-leader-election", "--leader-election-lease-duration", "2s",
             "--leader-election-renew-deadline", "1500ms", "--leader-election-retry-period", "200ms")
    a = start(str(tmp_path), cluster, *lease, name="epp-a")
    b = start(str(tmp_path), cluster, *lease, name="epp-b")
    try:
        wait_for(lambda: "SERVING" in (ready(a.ports["health"]), ready(b.ports["health"])), what="a leader")
        time.sleep(1.0)
        states = sorted([ready(a.ports["health"]), ready(b.ports["health"])])
        assert states == ["NOT_SERVING", "SERVING"], states
        leader, other = (a, b) if ready(a.ports["health"]) == "SERVING" else (b, a)
        leader.proc.kill()                                       # no graceful step-down: the lease must expire
        leader.proc.wait()
        wait_for(lambda: ready(other.ports["health"]) == "SERVING", timeout=10, what="takeover")
        lease_obj = cluster.kube.get("coordination.k8s.io", "leases", "default", "epp-default-pool.llm-d.ai")
        assert lease_obj["spec"]["leaseTransitions"] >= 1
    finally:
        a.stop()
        b.stop()


def test_rbac_lists_exactly_what_epp_uses(tmp_path, cluster):
    """Every API call an HA epp makes, as RBAC verbs, equals epp/datalayer/k8s/rbac.py (which the
    manifests' Role is checked against)."""
    from epp.datalayer.k8s.rbac import NAMESPACED
    cluster.kube.verbs.clear()
    a = start(str(tmp_path), cluster, "--ha-enable-leader-election", "--leader-election-retry-period", "100ms",
              name="epp-rbac")
    try:
        wait_for(lambda: ready(a.ports["health"]) == "SERVING", what="ready")
        wait_for(lambda: ("coordination.k8s.io", "leases", "update") in cluster.kube.verbs, what="a renewal")
        wait_for(lambda: len({v for v in cluster.kube.verbs if v[2] == "watch"}) == 4, what="all watches")
    finally:
        a.stop()
    granted = {(g, r, v) for (g, r), verbs in NAMESPACED.items() for v in verbs}
    assert cluster.kube.verbs == granted
