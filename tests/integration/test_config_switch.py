"""Through the real Envoy: the config file decides how epp routes, observably."""
import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from testbed.endpoints import write_endpoints
from testbed.http1 import post

from .stack import Envoy, Epp, PodGroup, landed_right

pytestmark = pytest.mark.envoy
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODE = "FULL_DUPLEX_STREAMED"


@pytest.fixture(scope="module")
def pods():
    group = PodGroup(4)
    yield group
    group.close()


def run_stack(tmp, pods, *args):
    efile = os.path.join(tmp, "endpoints.yaml")
    write_endpoints(efile, pods.pods)
    epp = Epp(tmp, efile, "--refresh-metrics-interval", "50ms", *args)
    envoy = Envoy(tmp, [MODE], epp.ports["grpc"])
    return epp, envoy


def served(envoy, body: bytes, pool, headers=None):
    st, raw, hs = post(envoy.ports[MODE], "/v1/completions", body, headers)
    assert landed_right(st, raw, body, pool) is None, landed_right(st, raw, body, pool)
    return json.loads(raw)["served_by"], hs


def shared_prefix_bodies(n: int) -> list[bytes]:
    system = "You are a careful assistant for the billing team. " * 60   # ~3 KB shared by every request
    return [json.dumps({"model": "m", "prompt": system + f"Question {i}: what is invoice {i * 7}?"}).encode()
            for i in range(n)]


@pytest.mark.parametrize("config, expect", [("random.yaml", "spreads"), ("prefix-heavy.yaml", "sticks"),
                                            ("default.yaml", "sticks")])
def test_config_file_changes_where_a_shared_prefix_goes(tmp_path, pods, config, expect):
    epp, envoy = run_stack(str(tmp_path), pods, "--config-file", os.path.join(ROOT, "config", config))
    pool = [p.address for p in pods.pods]
    try:
        where = Counter(served(envoy, b, pool)[0] for b in shared_prefix_bodies(40))
    finally:
        envoy.stop()
        epp.stop()
    if expect == "spreads":
        assert len(where) == 4 and max(where.values()) < 25, where
    else:
        assert where.most_common(1)[0][1] >= 38, where   # the first request picks; the rest follow it


SESSION_CONFIG = """apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: session-affinity-scorer
- type: random-picker
- type: weighted-random-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: session-affinity-scorer, weight: 1}
  - {pluginRef: weighted-random-picker}
"""


def test_session_affinity_from_config_text(tmp_path, pods):
    # session-affinity-scorer is Alpha upstream: it needs the flag
    epp, envoy = run_stack(str(tmp_path), pods, "--config-text", SESSION_CONFIG, "--allow-experimental-plugins")
    pool = [p.address for p in pods.pods]
    try:
        body = json.dumps({"model": "m", "prompt": "hello"}).encode()
        first, hs = served(envoy, body, pool)
        token = hs["x-session-token"]
        again = {served(envoy, body, pool, {"x-session-token": token})[0] for _ in range(15)}
        without = {served(envoy, body, pool)[0] for _ in range(30)}
    finally:
        envoy.stop()
        epp.stop()
    assert again == {first}
    assert len(without) > 1


def test_bad_config_fails_start_with_the_reason(tmp_path, pods):
    efile = tmp_path / "endpoints.yaml"
    write_endpoints(str(efile), pods.pods)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: queue-scorer\n"
                   "schedulingProfiles:\n- name: d\n  plugins:\n  - pluginRef: queue-scorers\n")
    r = subprocess.run([sys.executable, "-m", "epp", "--endpoints-file", str(efile), "--config-file", str(cfg),
                        "--secure-serving=false", "--bind-address", "127.0.0.1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1   # as upstream: a start-up failure exits 1
    assert "schedulingProfiles[d] references undefined plugin 'queue-scorers'" in r.stderr
    # an Alpha plugin without --allow-experimental-plugins: refused, as upstream
    r = subprocess.run([sys.executable, "-m", "epp", "--endpoints-file", str(efile), "--config-text", SESSION_CONFIG,
                        "--secure-serving=false", "--bind-address", "127.0.0.1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1   # as upstream: a start-up failure exits 1
    assert ("plugin 'session-affinity-scorer' (type: 'session-affinity-scorer') has Alpha stability level, but command "
            "line flag --allow-experimental-plugins is not set") in r.stderr
    r = subprocess.run([sys.executable, "-m", "epp", "--endpoints-file", str(efile), "--config-file", str(cfg),
                        "--config-text", "x"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "cannot be set at the same time" in r.stderr
