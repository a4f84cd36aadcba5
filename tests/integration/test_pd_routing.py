"""Through the real Envoy, epp as a process with config/pd.yaml over stand-in pods labelled by role (they
echo the headers they receive): a long prompt lands on a decode pod carrying x-prefiller-host-port of a
prefill pod; a short one, or the same long one again (cached on its decode pod), carries none, even
when the client sent one. The decisions are counted by reason on /metrics."""
import json
import os

import pytest

from testbed.http1 import post

from .stack import Envoy, Epp, PodGroup

pytestmark = pytest.mark.envoy
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODE = "FULL_DUPLEX_STREAMED"
LONG = "".join(f"clause {i}: the supplier ships order {i * 7919 % 1000} within ten days. " for i in range(60))
SHORT = "What is the capital of France?"
METRIC = "llm_d_inference_scheduler_pd_decision_total"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("pd-routing"))
    group = PodGroup(4)
    roles = {p.address: ("prefill" if i < 2 else "decode") for i, p in enumerate(group.pods)}
    efile = os.path.join(tmp, "endpoints.yaml")
    with open(efile, "w") as f:
        f.write("endpoints:\n")
        for p in group.pods:
            f.write(f'- name: {p.name}\n  address: "{p.address}"\n  labels: {{llm-d.ai/role: {roles[p.address]}}}\n')
    epp = Epp(tmp, efile, "--config-file", os.path.join(ROOT, "config", "pd.yaml"), "--decision-header",
              "--refresh-metrics-interval", "50ms")
    envoy = Envoy(tmp, [MODE], epp.ports["grpc"])
    try:
        yield envoy, epp, roles
    finally:
        envoy.stop()
        epp.stop()
        group.close()


def send(envoy, prompt, headers=None):
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": 8}).encode()
    st, raw, hs = post(envoy.ports[MODE], "/v1/completions", body, headers)
    assert st == 200, raw[:300]
    return json.loads(raw), json.loads(hs.get("x-epp-decision") or "{}")


def test_long_prompt_gets_a_prefill_pod_short_and_cached_ones_do_not(stack):
    envoy, epp, roles = stack
    seen, why = send(envoy, LONG, {"x-prefiller-host-port": "10.9.9.9:1"})
    assert roles[seen["served_by"]] == "decode", seen
    assert roles.get(seen["prefiller_header"]) == "prefill", seen      # ours, not the client's
    assert why["reasons"]["pd_decision"] == "prefill-decode" and why["reasons"]["pd_reason"] == "uncached"
    assert why["profiles"]["prefill"]["pick"] == [seen["prefiller_header"]]

    short, why = send(envoy, SHORT, {"x-prefiller-host-port": "10.9.9.9:1"})
    assert roles[short["served_by"]] == "decode" and short["prefiller_header"] is None, short
    assert why["reasons"]["pd_reason"] == "below_threshold"

    again, why = send(envoy, LONG)
    assert again["served_by"] == seen["served_by"] and again["prefiller_header"] is None, again
    assert why["reasons"]["pd_reason"] == "already_cached"

    assert epp.sample(METRIC, decision_type="prefill-decode", reason="uncached") == 1
    assert epp.sample(METRIC, decision_type="decode-only", reason="below_threshold") == 1
    assert epp.sample(METRIC, decision_type="decode-only", reason="already_cached") == 1
