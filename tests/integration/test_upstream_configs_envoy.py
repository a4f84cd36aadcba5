"""Upstream configs (tests/fixtures/upstream) and config/sticky.yaml, through the real Envoy: each routes
as its plugins say."""
import json
import os
from collections import Counter

import pytest

from testbed.endpoints import write_endpoints
from testbed.http1 import post

from .stack import Envoy, Epp, PodGroup, landed_right

pytestmark = pytest.mark.envoy
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "upstream")
MODE = "FULL_DUPLEX_STREAMED"


@pytest.fixture(scope="module")
def pods():
    group = PodGroup(3)
    yield group
    group.close()


@pytest.fixture
def stack(tmp_path, pods):
    started = []

    def start(config: str, *flags: str):
        efile = os.path.join(tmp_path, "endpoints.yaml")
        write_endpoints(efile, pods.pods)
        epp = Epp(str(tmp_path), efile, "--refresh-metrics-interval", "50ms", "--config-file", config, *flags)
        started.append(epp)
        envoy = Envoy(str(tmp_path), [MODE], epp.ports["grpc"])
        started.append(envoy)
        return envoy.ports[MODE]
    yield start
    for s in reversed(started):
        s.stop()


def shared_prefix_bodies(n: int) -> list[bytes]:
    system = "You answer questions about the shipping ledger, briefly. " * 50
    return [json.dumps({"model": "m", "prompt": system + f"Question {i}?"}).encode() for i in range(n)]


@pytest.mark.parametrize("config", [os.path.join(FIXTURES, "llmd-epp-config.yaml"),
                                    os.path.join(FIXTURES, "llmd-wellknown-optimized-baseline.yaml"),
                                    os.path.join(ROOT, "config", "sticky.yaml")],
                         ids=["llmd-epp-config", "llmd-optimized-baseline", "sticky"])
def test_prefix_affine_configs_keep_a_shared_prefix_together(stack, pods, config):
    port = stack(config)
    pool = [p.address for p in pods.pods]
    where = Counter()
    for body in shared_prefix_bodies(20):
        st, raw, _ = post(port, "/v1/completions", body)
        assert landed_right(st, raw, body, pool) is None, landed_right(st, raw, body, pool)
        where[json.loads(raw)["served_by"]] += 1
    assert where.most_common(1)[0][1] >= 18, where      # the first request picks; the rest follow it


def test_gie_conformance_config_routes_by_the_test_header(stack, pods):
    port = stack(os.path.join(FIXTURES, "gie-conformance-conformance-plugins.yaml"))
    pool = [p.address for p in pods.pods]
    body = json.dumps({"model": "m", "prompt": "hello"}).encode()
    for target in (pool[2], pool[0]):
        st, raw, hs = post(port, "/v1/completions", body, {"test-epp-endpoint-selection": target})
        assert landed_right(st, raw, body, pool) is None and json.loads(raw)["served_by"] == target
        assert "x-conformance-test-served-endpoint" in hs         # the verifier answered on the response
    st, raw, _ = post(port, "/v1/completions", body)               # no header: no endpoint passes the filter
    assert st == 429, raw


def test_payload_agnostic_config_routes_any_path_and_pins_sessions(stack, pods):
    port = stack(os.path.join(FIXTURES, "llmd-wellknown-payload-agnostic.yaml"), "--allow-experimental-plugins")
    pool = [p.address for p in pods.pods]
    body = b"<binary or any format at all>"
    st, raw, hs = post(port, "/v2/custom/infer", body)            # passthrough-parser: no grammar, no model
    assert landed_right(st, raw, body, pool) is None, raw
    first, token = json.loads(raw)["served_by"], hs["x-session-token"]
    again = {json.loads(post(port, "/v2/custom/infer", body, {"x-session-token": token})[1])["served_by"]
             for _ in range(10)}
    assert again == {first}


def test_an_upstream_config_this_epp_cannot_run_stops_it_with_the_reason(tmp_path, pods):
    import subprocess
    import sys
    efile = tmp_path / "endpoints.yaml"
    write_endpoints(str(efile), pods.pods)
    r = subprocess.run([sys.executable, "-m", "epp", "--endpoints-file", str(efile), "--config-file",
                        os.path.join(FIXTURES, "llmd-wellknown-predicted-latency-slo.yaml"),
                        "--secure-serving=false", "--bind-address", "127.0.0.1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1   # as upstream: a start-up failure exits 1
    assert "'predicted-latency-producer' (llm-d router v0.10) is not supported by this EPP" in r.stderr
