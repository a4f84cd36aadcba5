"""epp started with the argument lists of upstream's manifests and Helm charts (fixtures/upstream/
epp_args.yaml, each with its source), on a fake Kubernetes API: it starts, answers the gRPC health
service names those manifests' probes ask for, routes through the real Envoy, guards /metrics as the
manifest asks, and on SIGTERM drains as upstream does (probes fail at once, a second signal exits)."""
import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from epp import flags
from testbed.grpc_health import health
from testbed.http1 import post
from testbed.ports import free_port
from testbed.standin_pod import Pod
from testbed.wait import wait_for, wait_port

from .fake_kube import FakeKube, inference_pool, pod
from .stack import Envoy, PodGroup, landed_right

pytestmark = pytest.mark.envoy
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "upstream")
MODE = "FULL_DUPLEX_STREAMED"
with open(os.path.join(HERE, "epp_args.yaml")) as _f:
    FIXTURES = yaml.safe_load(_f)


def set_flag(args: list[str], name: str, value: str, append: bool = True) -> None:
    """Gives flag `name` the value `value` where the list sets it (either spelling), else appends it."""
    for i, a in enumerate(args):
        if a == f"--{name}":
            args[i + 1] = value
            return
        if a.startswith(f"--{name}="):
            args[i] = f"--{name}={value}"
            return
    if append:
        args.append(f"--{name}={value}")


def metrics_status(port: int, token: str | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def pods():
    """Two stand-in model servers on their own loopback IPs sharing one port, as pods share a targetPort."""
    group = PodGroup(0)
    port = free_port()
    members = []
    for i in range(2):
        p = Pod(port, name=f"vllm-{i}", host=f"127.0.0.{i + 2}")
        asyncio.run_coroutine_threadsafe(p.start(), group.loop).result(5)
        members.append(p)
    yield port, members
    for p in members:
        asyncio.run_coroutine_threadsafe(p.stop(), group.loop).result(5)
    group.close()


@pytest.mark.parametrize("entry", FIXTURES, ids=[e["name"] for e in FIXTURES])
def test_upstream_argument_list(tmp_path, pods, entry):
    port, members = pods
    parsed = flags.parse(entry["args"])            # what the list means, read as upstream reads it
    ns = parsed.pool_namespace if "--pool-namespace" in entry["args"] else entry["env"].get("NAMESPACE", "default")
    kube = FakeKube(bookmark_interval=1.0)
    proc = envoy = None
    try:
        for i, p in enumerate(members):
            kube.put("", "pods", ns, pod(f"vllm-{i}", p.host, {"app": "vllm"}))
        if parsed.pool_name:
            kube.put("inference.networking.k8s.io", "inferencepools", ns,
                     inference_pool(parsed.pool_name, {"app": "vllm"}, [port]))
        kube.tokens["prom-token"] = {"username": "system:serviceaccount:monitoring:prometheus", "groups": []}
        kube.access.add(("system:serviceaccount:monitoring:prometheus", "/metrics", "get"))

        # only what a shared test machine needs changes: ports, the config's path, the pool's target port
        ports = {k: free_port() for k in ("grpc-port", "grpc-health-port", "metrics-port")}
        args = list(entry["args"])
        for name, value in ports.items():
            set_flag(args, name, str(value))
        set_flag(args, "config-file", os.path.join(HERE, entry["config"]), append=False)
        set_flag(args, "endpoint-target-ports", str(port), append=False)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(entry["env"], KUBECONFIG=kube.kubeconfig(str(tmp_path / "kubeconfig")),
                   EPP_BIND_ADDRESS="127.0.0.1")
        log_path = tmp_path / "epp.log"
        with open(log_path, "w") as out, open(tmp_path / "epp.stdout", "w") as stdout:
            proc = subprocess.Popen([sys.executable, "-m", "epp", *args], stdout=stdout, stderr=out,
                                    stdin=subprocess.DEVNULL, env=env)
        wait_port(ports["grpc-port"], 20, proc, "epp")
        hp = ports["grpc-health-port"]
        probes = entry["probes"]
        wait_for(lambda: health(hp, probes["readiness"]) == "SERVING", timeout=15, what=f"readiness probe {probes}")
        assert health(hp, probes["liveness"]) == "SERVING"

        envoy = Envoy(str(tmp_path), [MODE], ports["grpc-port"], epp_tls=parsed.secure_serving)
        pool = [p.address for p in members]
        for i in range(6):
            body = json.dumps({"model": "m", "prompt": f"hello {i}"}).encode()
            st, raw, _ = post(envoy.ports[MODE], "/v1/completions", body)
            assert landed_right(st, raw, body, pool) is None, raw

        # /metrics: behind TokenReview + SubjectAccessReview unless the manifest turned that off
        if entry["metrics_auth"]:
            assert metrics_status(ports["metrics-port"])[0] == 401
            st, text = metrics_status(ports["metrics-port"], "prom-token")
            assert st == 200 and "inference_objective_request_total" in text
        else:
            assert metrics_status(ports["metrics-port"])[0] == 200

        # --zap-encoder json: every log line is one JSON object in zap's shape
        first = json.loads(log_path.read_text().splitlines()[0])
        assert {"level", "ts", "logger", "caller", "msg"} <= first.keys()

        # SIGTERM: the probes fail at once (liveness stays up under leader election) while ext_proc
        # drains; a second signal ends the process, as upstream's signal handler does
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: health(hp, probes["readiness"]) == "NOT_SERVING", timeout=5, what="draining")
        if parsed.ha_enable_leader_election:
            assert health(hp, "liveness") == "SERVING"
        st, raw, _ = post(envoy.ports[MODE], "/v1/completions", b'{"model": "m", "prompt": "draining"}')
        assert st == 200, raw                          # still routing inside the drain window
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 1
    finally:
        if envoy is not None:
            envoy.stop()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        kube.close()
