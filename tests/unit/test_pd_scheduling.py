"""P/D scheduling: disagg-profile-handler (and pd-profile-handler), its deciders, the role filters, the
x-prefiller-host-port header, the decision metric and explanation, and config errors."""
import json
import os
import random

import orjson
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from epp.datalayer.store import EndpointStore
from epp.metrics import EPPMetrics
from epp.requestcontrol.director import Director
from epp.scheduling.config import ConfigError, load
from epp.scheduling.plugins._disagg import PD_DECISIONS
from epp.scheduling.plugins._roles import ROLE_LABEL
from epp.scheduling.scheduler import from_config
from epp.scheduling.types import LLMRequest
from epp import headers as H
from epp.server.stream import RequestStream

from .helpers import endpoint, req_body, req_headers, resp_headers, set_headers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PD_YAML = open(os.path.join(ROOT, "config", "pd.yaml")).read()
LONG = "".join(f"section {i}: the refund policy of order {i * 7919 % 1000} applies. " for i in range(60))  # ~3,000 B
SHORT = "What is the capital of France?"


def pod(i: int, role: str | None, waiting: float = 0) -> object:
    return endpoint(i, waiting=waiting, **({ROLE_LABEL: role} if role is not None else {}))


def pool():
    return [pod(1, "prefill"), pod(2, "prefill"), pod(3, "decode"), pod(4, "decode")]


def req(text: str, model: str = "m") -> LLMRequest:
    return LLMRequest("r", model, model, "completions", text.encode(), body={"model": model, "prompt": text})


def scheduler(text: str = PD_YAML, seed: int = 1):
    s = from_config(load(text, "test.yaml"))
    for plugin in s.plugins:          # ties broken reproducibly
        if hasattr(plugin, "rng"):
            plugin.rng = random.Random(seed)
    return s


def run(s, text, eps, model="m"):
    result, _ = s.schedule(req(text, model), eps)
    return result


def prefill_pick(result):
    pr = result.profiles.get("prefill")
    return [ep.address for ep in pr.targets] if pr else []


def count(decision, reason, model="m"):
    return PD_DECISIONS.labels(model, decision, reason)._value.get()


def config(handler: str = "", decider: str = "", profiles: str = "", extra: str = "") -> str:
    """pd.yaml's plugins with another handler / decider entry (or none) and other profiles."""
    return f"""\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefill-filter
- type: decode-filter
- type: prefix-cache-scorer
- type: queue-scorer
{decider}
{handler}
{extra}
schedulingProfiles:
{profiles or PROFILES}"""


PROFILES = """\
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: prefix-cache-scorer, weight: 2}, {pluginRef: queue-scorer}]
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: prefix-cache-scorer, weight: 2}, {pluginRef: queue-scorer}]
"""
DECIDER = "- {type: prefix-based-pd-decider, parameters: {nonCachedTokens: 256}}"
HANDLER = "- {type: disagg-profile-handler, parameters: {deciders: {prefill: prefix-based-pd-decider}}}"


# ---------------------------------------------------------------------------------------------- deciding

def test_long_uncached_prompt_gets_a_prefill_pod_and_the_header():
    s, eps = scheduler(), pool()
    before = count("prefill-decode", "uncached")
    result = run(s, LONG, eps)
    assert result.primary == "decode" and result.targets[0].labels[ROLE_LABEL] == "decode"
    assert prefill_pick(result) and prefill_pick(result)[0] in ("10.0.0.1:8000", "10.0.0.2:8000")
    assert result.headers == [(H.PREFILLER, prefill_pick(result)[0])]
    assert result.reasons["pd_decision"] == "prefill-decode" and result.reasons["pd_reason"] == "uncached"
    assert ">= nonCachedTokens 256" in result.reasons["pd_detail"]
    assert count("prefill-decode", "uncached") == before + 1


def test_short_prompt_is_decode_only():
    s = scheduler()
    before = count("decode-only", "below_threshold")
    result = run(s, SHORT, pool())
    assert "prefill" not in result.profiles and not result.headers
    assert result.reasons == {"pd_decision": "decode-only", "pd_reason": "below_threshold",
                              "pd_detail": "prompt 8 tokens < nonCachedTokens 256"}
    assert count("decode-only", "below_threshold") == before + 1


def test_prompt_cached_on_the_chosen_decode_pod_is_decode_only_approximate():
    s, eps = scheduler(), pool()
    first = run(s, LONG, eps)
    assert prefill_pick(first)
    before = count("decode-only", "already_cached")
    again = run(s, LONG, eps)                     # prefix affinity brings it back to the same decode pod
    assert again.targets[0] is first.targets[0]
    assert again.reasons["pd_reason"] == "already_cached" and not again.headers and "prefill" not in again.profiles
    assert f"cached on {first.targets[0].address}" in again.reasons["pd_detail"]
    assert count("decode-only", "already_cached") == before + 1
    # the cache that counts is the chosen decode pod's: the other decode pod, busy elsewhere, has none
    other = [e for e in eps if e is not first.targets[0] and e.labels[ROLE_LABEL] == "decode"][0]
    only_other = [e for e in eps if e is not first.targets[0]]
    assert run(s, LONG, only_other).reasons["pd_reason"] == "uncached"
    assert other.address in run(s, LONG, only_other).reasons["pd_detail"]


def test_the_prefill_pod_is_chosen_by_prefix_affinity_among_prefill_pods():
    s, eps = scheduler(), pool()
    first = run(s, LONG, eps)
    # the same long document with a long new question: uncached on the decode pod beyond the
    # threshold, and the prefill pod that prefilled the document before holds its prefix
    follow = run(s, LONG + " and now a long new question " * 60, eps)
    assert follow.targets[0] is first.targets[0]
    assert follow.reasons["pd_reason"] == "uncached"
    assert prefill_pick(follow)[0] == prefill_pick(first)[0]


def test_prefill_affinity_with_a_renamed_prefill_profile():
    """The prefix producers record the prefill pick under whatever name the handler gives its prefill
    profile, not only "prefill"."""
    text = (PD_YAML.replace("prefill: prefill", "prefill: pf").replace("- name: prefill", "- name: pf"))
    s, eps = scheduler(text), pool()
    first = run(s, LONG, eps)
    assert first.prefill == "pf" and first.prefill_target() is not None
    follow, _ = s.schedule(req(LONG + " and now a long new question " * 60), eps, explain=True)
    assert follow.prefill_target() is first.prefill_target()
    assert follow.profiles["pf"].scores[first.prefill_target().address]["prefix-cache-scorer"] > 0


def test_prefill_pod_chosen_by_load_when_no_affinity():
    s = scheduler()
    eps = [pod(1, "prefill", waiting=9), pod(2, "prefill"), pod(3, "decode")]
    assert prefill_pick(run(s, LONG, eps)) == ["10.0.0.2:8000"]


def test_no_prefill_pod_is_decode_only_with_its_reason():
    s = scheduler()
    before = count("decode-only", "no_prefill_pod")
    result = run(s, LONG, [pod(3, "decode"), pod(4, None)])
    assert result.targets and not result.headers
    assert result.profiles["prefill"].targets == []       # the prefill profile ran and found none
    assert result.reasons["pd_reason"] == "no_prefill_pod" and "left no prefill endpoint" in result.reasons["pd_detail"]
    assert count("decode-only", "no_prefill_pod") == before + 1


def test_a_pod_serving_both_roles_is_not_sent_its_own_prefill():
    s = scheduler()
    result = run(s, LONG, [pod(5, "prefill-decode")])
    assert result.targets[0].address == "10.0.0.5:8000" and not result.headers
    assert result.reasons["pd_reason"] == "same_pod"


def test_always_decider():
    text = config(HANDLER.replace("prefix-based-pd-decider", "always-disagg-pd-decider"),
                  "- type: always-disagg-pd-decider")
    s = scheduler(text)
    before = count("prefill-decode", "always")
    result = run(s, SHORT, pool())
    assert prefill_pick(result) and result.headers[0][0] == H.PREFILLER
    assert result.reasons["pd_reason"] == "always"
    assert count("prefill-decode", "always") == before + 1


def test_decider_gates():
    zero = scheduler(config(HANDLER, "- {type: prefix-based-pd-decider, parameters: {nonCachedTokens: 0}}"))
    assert run(zero, LONG, pool()).reasons["pd_reason"] == "disabled"
    gated = scheduler(config(HANDLER, "- {type: prefix-based-pd-decider, "
                                      "parameters: {nonCachedTokens: 16, promptTokens: 5000}}"))
    r = run(gated, LONG, pool())
    assert r.reasons["pd_reason"] == "below_threshold" and "promptTokens 5000" in r.reasons["pd_detail"]
    assert run(gated, LONG * 8, pool()).reasons["pd_reason"] == "uncached"


def test_handler_without_decider_is_decode_only():
    s = scheduler(config("- type: disagg-profile-handler"))
    r = run(s, LONG, pool())
    assert r.reasons["pd_reason"] == "no_decider" and "prefill" not in r.profiles and not r.headers


def test_prefill_first_stage_order():
    s = scheduler(config("- {type: disagg-profile-handler, parameters: {stageOrder: prefill-first}}"))
    r = run(s, SHORT, pool())
    assert r.primary == "decode" and r.reasons["pd_reason"] == "prefill_first" and prefill_pick(r)
    assert r.headers == [(H.PREFILLER, prefill_pick(r)[0])]
    r = run(s, SHORT, [pod(3, "decode")])
    assert r.reasons["pd_reason"] == "no_prefill_pod" and not r.headers


def test_no_decode_pod_leaves_no_target_and_no_decision():
    s = scheduler()
    before = count("decode-only", "no_prefill_pod"), count("prefill-decode", "uncached")
    r = run(s, LONG, [pod(1, "prefill")])
    assert r.targets == [] and r.primary == "decode" and not r.headers
    assert (count("decode-only", "no_prefill_pod"), count("prefill-decode", "uncached")) == before


def test_prompt_tokens_come_from_the_token_producer():
    from vllm_sim.tokenizer import DEFAULT_DIR
    s = scheduler(config(HANDLER, DECIDER, extra=f"- {{type: token-producer, parameters: {{local: {{path: {DEFAULT_DIR}}}}}}}"))
    decider = s.handler.decider
    assert decider.tokens is not None and decider.tokens.real
    n = len(decider.tokens.tokenizer.encode(SHORT, add_special_tokens=False).ids)
    assert run(s, SHORT, pool()).reasons["pd_detail"] == f"prompt {n} tokens < nonCachedTokens 256"
    assert run(s, LONG, pool()).reasons["pd_reason"] == "uncached"


# ---------------------------------------------------------------------------------- precise producer

PRECISE = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: token-producer, parameters: {local: {path: TOKENIZER}}}
- {type: precise-prefix-cache-producer, parameters: {tokenProcessorConfig: {blockSize: 16}}}
- {type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}}
- type: queue-scorer
- type: prefill-filter
- type: decode-filter
- {type: prefix-based-pd-decider, parameters: {nonCachedTokens: 64}}
- {type: disagg-profile-handler, parameters: {deciders: {prefill: prefix-based-pd-decider}}}
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: prefix-cache-scorer, weight: 2}, {pluginRef: queue-scorer}]
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: prefix-cache-scorer, weight: 2}, {pluginRef: queue-scorer}]
"""


def precise_scheduler(text=PRECISE):
    from vllm_sim.tokenizer import DEFAULT_DIR
    return scheduler(text.replace("TOKENIZER", DEFAULT_DIR).replace("/etc/epp/tokenizer", DEFAULT_DIR))


def store_blocks(s, address, text, medium="GPU"):
    """The pod reports (KV events) that it holds the whole blocks of this prompt."""
    prod = s.handler.decider.producer
    ids = s.handler.decider.tokens.tokenizer.encode(text, add_special_tokens=False).ids
    blocks = len(ids) // 16
    hashes = [hash((address, medium, i)) & (2**64 - 1) for i in range(blocks)]
    prod.index.apply_stored(address, hashes, None, ids[:blocks * 16], 16, medium, model="m")
    return len(ids), blocks * 16


@pytest.mark.parametrize("medium", ["GPU", "CPU"])
def test_precise_cached_tokens_on_the_decode_pod(medium):
    from epp.scheduling.plugins.precise_prefix_cache_producer import PrecisePrefixCacheProducer
    s = precise_scheduler()
    assert isinstance(s.handler.decider.producer, PrecisePrefixCacheProducer)
    eps = pool()
    r = run(s, LONG, eps)
    assert r.reasons["pd_reason"] == "uncached"   # no KV events yet: nothing cached anywhere
    total, cached = store_blocks(s, "10.0.0.4:8000", LONG, medium)
    r = run(s, LONG, eps)
    assert r.targets[0].address == "10.0.0.4:8000"   # the pod that holds the prefix decodes
    # a CPU-tier block is a whole block of cached tokens: the tier weighs the score, not the count
    assert r.reasons["pd_reason"] == "already_cached", r.reasons
    assert f"{cached} cached on 10.0.0.4:8000" in r.reasons["pd_detail"]
    assert not r.headers


def test_pd_precise_example_uses_the_precise_producer():
    from epp.scheduling.plugins.precise_prefix_cache_producer import PrecisePrefixCacheProducer
    s = precise_scheduler(open(os.path.join(ROOT, "config", "pd-precise.yaml")).read())
    assert isinstance(s.handler.decider.producer, PrecisePrefixCacheProducer)
    assert not [p for p in s.plugins if type(p).__name__ == "ApproxPrefixCacheProducer"
                and p is not s.handler.decider.producer.fallback]


def test_decider_without_a_prefix_scorer_in_the_decode_profile_uses_the_configured_producer():
    profiles = """\
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: queue-scorer}]
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: queue-scorer}]
"""
    s = scheduler(config(HANDLER, DECIDER, profiles, "- type: approx-prefix-cache-producer"))
    producer = s.handler.decider.producer
    assert producer.type_name == "approx-prefix-cache-producer" and producer in s.plugins
    s = scheduler(config(HANDLER, DECIDER, profiles))      # none configured: one of its own, fed by the picks
    own = s.handler.decider.producer
    assert own in s.plugins
    eps = [pod(1, "prefill"), pod(3, "decode")]
    assert run(s, LONG, eps).reasons["pd_reason"] == "uncached"
    assert run(s, LONG, eps).reasons["pd_reason"] == "already_cached"


# ------------------------------------------------------------------------------------------- filters

DECODES = {"decode", "prefill-decode", "both", "encode-prefill-decode", "encode-decode", None}
PREFILLS = {"prefill", "encode-prefill", "prefill-decode", "both", "encode-prefill-decode"}
ENCODES = {"encode", "encode-prefill", "encode-decode", "encode-prefill-decode"}
ROLES = sorted(DECODES | PREFILLS | ENCODES | {"", "Decode", "router"}, key=str)


@pytest.mark.parametrize("role", ROLES, ids=str)
def test_role_filters(role):
    from epp.scheduling.plugins.decode_filter import DecodeFilter
    from epp.scheduling.plugins.encode_filter import EncodeFilter
    from epp.scheduling.plugins.prefill_filter import PrefillFilter
    ep = [pod(1, role)]
    assert bool(DecodeFilter().filter({}, None, ep)) == (role in DECODES)
    assert bool(PrefillFilter().filter({}, None, ep)) == (role in PREFILLS)
    assert bool(EncodeFilter().filter({}, None, ep)) == (role in ENCODES)


# ------------------------------------------------------------------------- explanation, header, metric

def director(s, eps, explain=True):
    store = EndpointStore()
    store.replace(eps)
    metrics = EPPMetrics(CollectorRegistry())
    return Director(store, s, metrics, explain=explain)


def test_stream_sets_our_header_and_drops_the_clients():
    d = director(scheduler(), pool())
    for text, ours in ((LONG, True), (SHORT, False)):
        st = RequestStream(d, 1 << 20)
        st.on_message(req_headers(extra={H.PREFILLER: "6.6.6.6:1"}))
        out = st.on_message(req_body(json.dumps({"model": "m", "prompt": text}).encode()))
        c = out[0].request_headers.response
        hs = set_headers(c)
        if ours:
            assert hs[H.PREFILLER] in ("10.0.0.1:8000", "10.0.0.2:8000")
            assert H.PREFILLER not in c.header_mutation.remove_headers
        else:
            assert H.PREFILLER not in hs and H.PREFILLER in c.header_mutation.remove_headers
        explained = orjson.loads(set_headers(st.on_message(resp_headers())[0].response_headers.response)[H.DECISION])
        assert explained["reasons"]["pd_decision"] == ("prefill-decode" if ours else "decode-only")
        assert explained["pick"] == [hs[H.DEST]]
        assert ("prefill" in explained["profiles"]) == ours
        st.close()


def test_the_prefill_pod_counts_in_flight_until_the_answer_starts():
    """Load-aware prefill scorers see epp's own prefills: the prefill pod holds the request until the
    first response byte (the prefill leg is over then), the decode pod until the end."""
    eps = pool()
    d = director(scheduler(), eps)
    st = RequestStream(d, 1 << 20)
    st.on_message(req_headers())
    out = st.on_message(req_body(json.dumps({"model": "m", "prompt": LONG}).encode()))
    hs = set_headers(out[0].request_headers.response)
    by = {ep.address: ep for ep in eps}
    prefill, decode = by[hs[H.PREFILLER]], by[hs[H.DEST]]
    assert (prefill.in_flight, decode.in_flight) == (1, 1) and prefill.in_flight_tokens > 0
    st.on_message(resp_headers())
    assert (prefill.in_flight, prefill.in_flight_tokens, decode.in_flight) == (0, 0, 1)
    st.close()
    assert decode.in_flight == 0 and prefill.in_flight == 0
    # a stream that ends before any answer (client gone) releases both
    st = RequestStream(d, 1 << 20)
    st.on_message(req_headers())
    st.on_message(req_body(json.dumps({"model": "m", "prompt": LONG.replace("refund", "shipping")}).encode()))
    assert sum(ep.in_flight for ep in eps) == 2
    st.close()
    assert all(ep.in_flight == 0 and ep.in_flight_tokens == 0 for ep in eps)


def test_metric_is_registered_once_with_upstream_labels():
    run(scheduler(), SHORT, pool(), model="metric-model")
    run(scheduler(), SHORT, pool(), model="metric-model")          # a second config: no double registration
    text = generate_latest(REGISTRY).decode()
    line = ('llm_d_inference_scheduler_pd_decision_total{decision_type="decode-only",'
            'model_name="metric-model",reason="below_threshold"} 2.0')
    assert line in text
    assert ('llm_d_epp_disagg_decision_total{decision_type="decode-only",model_name="metric-model",'
            'plugin_name="disagg-profile-handler",plugin_type="disagg-profile-handler"} 2.0') in text
    run(scheduler(), SHORT, pool(), model="")
    assert count("decode-only", "below_threshold", "unknown") >= 1


# ----------------------------------------------------------------------------------------- config

def test_pd_example_loads_with_upstream_names():
    c = load(PD_YAML, "pd.yaml")
    h = c.handler
    assert h.type_name == "disagg-profile-handler" and (h.decode, h.prefill) == ("decode", "prefill")
    assert h.decider.type_name == "prefix-based-pd-decider" and h.decider.non_cached == 256
    assert h.decider.producer.type_name == "approx-prefix-cache-producer"


def test_upstream_sample_config_loads():
    text = config(HANDLER, "- {type: prefix-based-pd-decider, parameters: {nonCachedTokens: 16}}",
                  extra="- {type: approx-prefix-cache-producer, parameters: {maxPrefixTokensToMatch: 16384, "
                        "lruCapacityPerServer: 31250}}\n- type: max-score-picker")
    s = scheduler(text)
    assert s.handler.decider.producer is next(p for p in s.plugins if p.type_name == "approx-prefix-cache-producer")


def test_flat_parameters_and_the_deprecated_types():
    flat = config("- {type: disagg-profile-handler, parameters: {decodeProfile: d, prefillProfile: p, "
                  "deciderPluginName: prefix-based-pd-decider}}", DECIDER,
                  PROFILES.replace("name: prefill", "name: p").replace("name: decode", "name: d"))
    s = scheduler(flat)
    r = run(s, LONG, pool())
    assert r.primary == "d" and r.headers == [(H.PREFILLER, r.profiles["p"].targets[0].address)]
    # pd-profile-handler: the decider is the plugin named prefix-based-pd-decider unless told otherwise;
    # with the deprecated prefill-header-handler beside it the header is still set once
    old = config("- {type: pd-profile-handler, parameters: {primaryPort: 8000, prefixPluginType: prefix-cache-scorer}}",
                 DECIDER, extra="- type: prefill-header-handler")
    s = scheduler(old)
    r = run(s, LONG, pool())
    assert r.reasons["pd_reason"] == "uncached" and r.headers == [(H.PREFILLER, prefill_pick(r)[0])]
    before = PD_DECISIONS.labels("m", "decode-only", "below_threshold")._value.get()
    run(s, SHORT, pool())
    assert PD_DECISIONS.labels("m", "decode-only", "below_threshold")._value.get() == before + 1


def test_headers_handler_beside_another_profile_handler():
    from epp.scheduling.plugins.disagg_headers_handler import DisaggHeadersHandler
    from epp.scheduling.types import ProfileResult, SchedulingResult
    h = DisaggHeadersHandler(prefillProfile="pf")
    h.bind({})
    eps = pool()
    res = SchedulingResult({"main": ProfileResult([eps[2]]), "pf": ProfileResult([eps[0]])}, "main")
    assert h.pre_request({}, None, res) == [(H.PREFILLER, eps[0].address)]
    assert h.pre_request({}, None, SchedulingResult({"main": ProfileResult([eps[2]])}, "main")) is None


BAD = [
    (config(HANDLER, "- {type: prefix-based-pd-decider, parameters: {nonCachedTokens: -1}}"),
     "parameter nonCachedTokens must be an integer >= 0, got -1"),
    (config(HANDLER, "- {type: prefix-based-pd-decider, parameters: {nonCachedTokens: 256, threshold: 3}}"),
     "unknown parameter 'threshold' for plugin type 'prefix-based-pd-decider'; known: nonCachedTokens, promptTokens"),
    (config(HANDLER, "- {type: prefix-based-pd-decider, parameters: {promptTokens: many}}"),
     "parameter promptTokens must be an integer >= 0, got 'many'"),
    (config(HANDLER), "deciders.prefill plugin not found: 'prefix-based-pd-decider'"),
    (config("- {type: disagg-profile-handler, parameters: {deciders: {prefill: queue-scorer}}}"),
     "deciders.prefill: plugin 'queue-scorer' \\(queue-scorer\\) is not a P/D decider"),
    (config("- {type: disagg-profile-handler, parameters: {deciders: {prefil: x}}}"),
     "unknown field deciders.prefil; known: prefill, encode"),
    (config("- {type: disagg-profile-handler, parameters: {profiles: {decode: decode}, decodeProfile: decode}}"),
     "use one format exclusively"),
    (config("- {type: disagg-profile-handler, parameters: {stageOrder: sideways}}"),
     "invalid stageOrder 'sideways', must be 'decode-first' or 'prefill-first'"),
    (config("- {type: disagg-profile-handler, parameters: {stageOrder: prefill-first, "
            "deciders: {prefill: prefix-based-pd-decider}}}", DECIDER),
     "a prefill decider is not supported in prefill-first stage order"),
    (config("- {type: disagg-profile-handler, parameters: {deciders: {encode: prefix-based-pd-decider}}}", DECIDER),
     "encode disaggregation is not supported"),
    (config("- {type: disagg-profile-handler, parameters: {profiles: {decode: dec}}}"),
     "no scheduling profile 'dec' for the decode stage \\(profiles.decode\\)"),
    (config(HANDLER, DECIDER, PROFILES.split("- name: decode")[0].replace("name: prefill", "name: decode")
            + "- name: other\n  plugins: [{pluginRef: queue-scorer}]\n"),
     "no scheduling profile 'prefill' for the prefill stage"),
    (config("- {type: pd-profile-handler, parameters: {threshold: 100}}", DECIDER),
     "configure a prefix-based-pd-decider with nonCachedTokens"),
    (config("- {type: pd-profile-handler, parameters: {primaryPort: 70000}}", DECIDER),
     "invalid primaryPort: must be between 1 and 65535, got 70000"),
    (config("- {type: pd-profile-handler, parameters: {deciderPluginName: ''}}", DECIDER),
     "decider plugin name is not defined"),
    (config("- type: pd-profile-handler"), "deciders.prefill plugin not found: 'prefix-based-pd-decider'"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_configs_say_what_is_wrong(text, message):
    with pytest.raises(ConfigError, match=message):
        load(text, "bad.yaml")
