"""Through the real Envoy, on simulated vLLM pods that publish their KV events to epp: a shared-prefix
workload under KV pressure gets at least the cluster prefix hit rate with precise routing that it gets
with the approximate scorer, and the precise producer reads every pod's real cache."""
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from netutil import free_port, free_range

from .stack import Envoy, Epp, post

pytestmark = pytest.mark.envoy
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODE = "FULL_DUPLEX_STREAMED"
PODS = 3


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("precise")
    kv_port, base = free_port(), free_range(PODS)
    efile = str(tmp / "endpoints.yaml")
    events = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://127.0.0.1:{kv_port}",
              "topic": "kv@127.0.0.1:{port}@m"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm_sim.pool", "--count", str(PODS), "--base-port", str(base), "--endpoints-file", efile,
         "--", "--model", "m", "--time-scale", "50", "--num-gpu-blocks-override", "400",
         "--kv-events-config", json.dumps(events)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in proc.stdout:
        if "pool ready" in line:
            break
    else:
        raise AssertionError("sim pool did not start")

    class Pool:
        pass
    p = Pool()
    p.tmp, p.efile, p.kv_port = str(tmp), efile, kv_port
    p.addresses = [f"127.0.0.1:{base + i}" for i in range(PODS)]
    yield p
    proc.terminate()
    proc.wait(20)


def reset(pool) -> None:
    for a in pool.addresses:
        urllib.request.urlopen(urllib.request.Request(f"http://{a}/reset_prefix_cache", method="POST"), timeout=5).read()


def workload() -> list[bytes]:
    """8 customers, each with a long system prompt of their own, asking 5 questions each, interleaved."""
    out = []
    for q in range(5):
        for c in range(8):
            system = f"Customer {c} account terms. " + f"Clause {c}: the billing rules of customer {c} apply. " * 60
            out.append(json.dumps({"model": "m", "prompt": system + f" Question {q}: what about invoice {q * 11}?",
                                   "max_tokens": 4, "ignore_eos": True}).encode())
    return out


def run(tmp, pool, config_text: str, name: str) -> tuple[float, dict]:
    reset(pool)
    epp = Epp(tmp, pool.efile, "--config-text", config_text, "--refresh-metrics-interval", "50ms", name=name)
    envoy = Envoy(tmp, [MODE], epp.ports["grpc"])
    try:
        # pods queue KV events while no epp listens (ZMQ PUB on connect) and flush them on connection:
        # one request, then a moment for that backlog (and the subscription) to drain before measuring
        warm = json.dumps({"model": "m", "prompt": "warm-up " * 40, "max_tokens": 1}).encode()
        assert post(envoy.ports[MODE], "/v1/completions", warm)[0] == 200
        time.sleep(1.0)
        prompt = cached = 0
        where = {}
        for i, body in enumerate(workload()):
            st, raw, _ = post(envoy.ports[MODE], "/v1/completions", body)
            assert st == 200, raw[:300]
            usage = json.loads(raw)["usage"]
            prompt += usage["prompt_tokens"]
            cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            if i == 0:
                time.sleep(0.3)   # the first KV events (and the ZMQ subscription) settle
        where["kv_messages"] = epp.sample("epp_kv_events_total", what="messages")
        where["index_entries"] = epp.sample("epp_precise_prefix_index_entries")
        return cached / prompt, where
    finally:
        envoy.stop()
        epp.stop()


def test_precise_hit_rate_at_least_approximate(tmp_path, pool):
    from vllm_sim.tokenizer import DEFAULT_DIR
    approximate = open(os.path.join(ROOT, "config", "default.yaml")).read()
    precise = f"""apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: token-producer
  parameters: {{local: {{path: {DEFAULT_DIR}}}}}
- type: precise-prefix-cache-producer
  parameters:
    kvEventsConfig: {{zmqEndpoint: "tcp://127.0.0.1:{pool.kv_port}"}}
    speculativeIndexing: true
- type: prefix-cache-scorer
  parameters: {{prefixMatchInfoProducerName: precise-prefix-cache-producer}}
- type: queue-scorer
- type: kv-cache-utilization-scorer
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: prefix-cache-scorer, weight: 3}}
  - {{pluginRef: queue-scorer, weight: 2}}
  - {{pluginRef: kv-cache-utilization-scorer, weight: 2}}
"""
    approx_rate, _ = run(str(tmp_path), pool, approximate, "epp-approximate")
    precise_rate, seen = run(str(tmp_path), pool, precise, "epp-precise")
    assert seen["kv_messages"] > 0 and seen["index_entries"] > 0, seen       # exposed on /metrics
    print(f"cluster prefix hit rate: approximate {approx_rate:.3f}, precise {precise_rate:.3f}")
    assert precise_rate > 0.5
    assert precise_rate >= approx_rate - 0.02, (approx_rate, precise_rate)
