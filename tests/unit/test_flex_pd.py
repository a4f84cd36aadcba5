"""epp-flex-role-filter and config/pd-flex.yaml: flex pods (prefill-decode) prefill for the decode-only pods
below saturation, serve whole requests once every decode-only pod backs up, and take no remote prefill
while they stream answers; the latency model's count of the answers each pod streams."""
import os

import orjson
import pytest

from epp.datalayer.store import EndpointStore
from epp.requestcontrol.director import Director
from epp.scheduling.config import ConfigError, load
from epp.scheduling.plugins._latency_model import LatencyModel
from epp.scheduling.scheduler import from_config
from tests.unit.helpers import endpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = open(os.path.join(ROOT, "config", "pd-flex.yaml")).read()
FLEX, DECODE = {"10.0.0.1:8000", "10.0.0.3:8000"}, {"10.0.0.2:8000", "10.0.0.4:8000"}
LONG = "word " * 1600          # 8,000 bytes: 2,000 tokens at 4 bytes each


def pod(i: int, role: str, waiting: float = 0, running: float = 0):
    ep = endpoint(i, waiting=waiting, **{"llm-d.ai/role": role})
    ep.metrics.running = running
    return ep


def setup(eps, text: str = CONFIG):
    sched = from_config(load(text))
    store = EndpointStore()
    store.replace(eps)
    model = next(p for p in sched.plugins if isinstance(p, LatencyModel))
    return Director(store, sched, explain=True), model


SEEN = [0]


def decide(d, prompt: str = ""):
    SEEN[0] += 1
    prompt = prompt or f"{SEEN[0]:08d} {LONG}"   # a prompt no pod holds yet
    dec = d.decide({}, "/v1/completions", orjson.dumps({"model": "m", "prompt": prompt, "stream": True}), None)
    r = dec.result
    prefill = r.profiles.get("prefill")
    return (r.targets[0].address, prefill.targets[0].address if prefill and prefill.targets else None,
            r.reasons["pd_reason"], dec)


def finish(d, dec):
    d.response_started(dec, 200, True)
    dec.usage.feed(b'data: {"choices":[{"text":"a"}]}\n\n')
    d.done(dec, 200)


def pool(decode_waiting: float = 0):
    return [pod(1, "prefill-decode"), pod(2, "decode", waiting=decode_waiting),
            pod(3, "prefill-decode"), pod(4, "decode", waiting=decode_waiting)]


def test_below_saturation_flex_pods_only_prefill():
    d, _ = setup(pool())
    for _ in range(6):
        decode, prefill, reason, dec = decide(d)
        assert decode in DECODE and prefill in FLEX and reason == "uncached"
        finish(d, dec)


def test_saturated_decode_pods_let_the_flex_pods_serve_whole_requests():
    # every decode-only pod has 2 prompts waiting (2 x 2,000 tokens >= 1.5 x the mean prompt): the flex
    # pods, idle, predict the earliest first token and take the request
    d, model = setup(pool(decode_waiting=2))
    model.mean_uncached = 2000
    decode, _, _, _ = decide(d)
    assert decode in FLEX
    # one decode-only pod below the mark keeps the gate shut
    eps = pool(decode_waiting=2)
    eps[3].metrics.waiting = 1
    d, model = setup(eps)
    model.mean_uncached = 2000
    assert decide(d)[0] in DECODE


def test_a_flex_pod_streaming_answers_takes_no_remote_prefill():
    eps = [pod(1, "prefill-decode"), pod(2, "decode")]
    d, model = setup(eps)
    model._pod("10.0.0.1:8000").decoding = 1
    decode, prefill, reason, dec = decide(d)
    assert (decode, prefill, reason) == ("10.0.0.2:8000", None, "no_prefill_pod")
    assert not any(k == "x-prefiller-host-port" for k, _ in dec.headers or ())
    finish(d, dec)
    model._pod("10.0.0.1:8000").decoding = 0
    assert decide(d)[1:3] == ("10.0.0.1:8000", "uncached")
    # a pod that only prefills is a prefill target whatever it streams
    d, model = setup([pod(1, "prefill"), pod(2, "decode")])
    model._pod("10.0.0.1:8000").decoding = 3
    assert decide(d)[1:3] == ("10.0.0.1:8000", "uncached")


def test_the_model_counts_the_answers_each_pod_streams_until_they_end():
    d, model = setup(pool())
    decs = [decide(d)[3] for _ in range(4)]
    counts = {a: model.decoding(a) for a in FLEX | DECODE}
    assert sum(counts.values()) == 4 and all(counts[a] == 0 for a in FLEX)
    for dec in decs:
        finish(d, dec)
    assert all(model.decoding(a) == 0 for a in FLEX | DECODE)
    assert model.decoding("10.9.9.9:1") == 0


def test_pools_without_flex_pods_are_untouched():
    # decode-only and prefill-only pods: the filter keeps every endpoint in both phases
    d, model = setup([pod(1, "prefill"), pod(2, "decode", waiting=5), pod(3, "decode", waiting=5)])
    model.mean_uncached = 2000
    decode, prefill, reason, _ = decide(d)
    assert decode in {"10.0.0.2:8000", "10.0.0.3:8000"} and prefill == "10.0.0.1:8000"
    # flex pods only: every one decodes
    d, _ = setup([pod(1, "prefill-decode"), pod(3, "both")])
    assert decide(d)[0] in FLEX


@pytest.mark.parametrize("bad", [
    "phase: decode\n    queuedPrompts: -1", "phase: encode\n    queuedPrompts: 1.5",
    "phase: decode\n    queuedPrompts: 1.5\n    latencyScorerName: nope", "phase: decode\n    queuedPrompts: many"])
def test_parameters(bad):
    load(CONFIG.replace("phase: decode\n    queuedPrompts: 1.5", "phase: decode\n    queuedPrompts: 3"))
    with pytest.raises(ConfigError):
        load(CONFIG.replace("phase: decode\n    queuedPrompts: 1.5", bad))


def test_needs_a_latency_scorer():
    text = CONFIG.replace("- type: epp-predicted-latency-scorer\n", "").replace(
        "  - pluginRef: epp-predicted-latency-scorer\n    weight: 1\n", "").replace(
        "  - pluginRef: epp-predicted-latency-scorer\n", "")
    with pytest.raises(ConfigError, match="epp-predicted-latency-scorer"):
        load(text)
