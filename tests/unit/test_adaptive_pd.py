"""epp-adaptive-pd-decider: disaggregates only when the uncached part is long and a prefill pod would give
the first token within `headroom` of prefilling on the decode pod; config/pd-adaptive.yaml end to end."""
import os

import orjson
import pytest

from epp.datalayer.store import EndpointStore
from epp.requestcontrol.director import Director
from epp.scheduling.config import ConfigError, load
from epp.scheduling.scheduler import from_config
from tests.unit.helpers import endpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pod(i: int, role: str, running: float = 0, waiting: float = 0):
    ep = endpoint(i, waiting=waiting, **{"llm-d.ai/role": role})
    ep.metrics.running = running
    return ep


def setup(eps):
    cfg = load(open(os.path.join(ROOT, "config", "pd-adaptive.yaml")).read())
    s = from_config(cfg)
    store = EndpointStore()
    store.replace(eps)
    return Director(store, s, explain=True), s


def decide(d, prompt: str):
    dec = d.decide({}, "/v1/completions", orjson.dumps({"model": "m", "prompt": prompt, "stream": True}), None)
    reasons = dec.result.reasons
    return dec, reasons["pd_decision"], reasons["pd_reason"]


LONG = "word " * 1600          # 8,000 bytes: 2,000 tokens at 4 bytes each
SHORT = "word " * 200


def test_short_prompts_prefill_locally():
    d, _ = setup([pod(1, "prefill"), pod(2, "decode")])
    assert decide(d, SHORT)[2] == "below_threshold"


def test_long_prefills_go_to_a_prefill_pod_with_headroom():
    d, _ = setup([pod(1, "prefill"), pod(2, "decode", running=12)])
    dec, decision, reason = decide(d, LONG)
    assert (decision, reason) == ("prefill-decode", "uncached")
    assert ("x-prefiller-host-port", "10.0.0.1:8000") in dec.headers


def test_work_flows_back_to_the_decode_pod_when_the_prefill_pods_are_behind():
    d, s = setup([pod(1, "prefill", waiting=20), pod(2, "decode", running=12)])
    model = next(p for p in s.plugins if type(p).__name__ == "LatencyModel")
    model.mean_uncached = 2000                       # 20 queued prompts of ~2,000 tokens on the prefill pod
    assert decide(d, LONG)[1:] == ("decode-only", "prefill_busy")
    # within headroom: 1 queued prompt on the prefill pod (2x the local TTFT at most) still goes there
    d, s = setup([pod(1, "prefill", waiting=1), pod(2, "decode", running=12)])
    next(p for p in s.plugins if type(p).__name__ == "LatencyModel").mean_uncached = 2000
    assert decide(d, LONG)[1:] == ("prefill-decode", "uncached")


def test_parameters():
    base = open(os.path.join(ROOT, "config", "pd-adaptive.yaml")).read()
    load(base.replace("minUncachedTokens: 512", "minUncachedTokens: 256\n    headroom: 1.2"))
    for bad in ("minUncachedTokens: -1", "minUncachedTokens: 512\n    headroom: -1",
                "minUncachedTokens: 512\n    latencyScorerName: nope"):
        with pytest.raises(ConfigError):
            load(base.replace("minUncachedTokens: 512", bad))
