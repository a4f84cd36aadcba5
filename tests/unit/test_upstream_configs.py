"""Real upstream EndpointPickerConfig files (tests/fixtures/upstream, each naming its source repo, path
and tag) load as llm-d router v0.10 loads them, or are refused exactly where this EPP lacks a plugin
type (with the reason docs/unsupported-plugins.md gives)."""
import glob
import os
import re

import pytest

from epp.scheduling.config import UNSUPPORTED, ConfigError, load
from epp.scheduling.framework import REGISTRY, Parser
from epp.scheduling.plugins import load_all

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIXTURES = sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "upstream", "*.yaml")))

# refused: the plugin type that is missing here
REFUSED = {
    "llmd-epp-mm-embeddings-cache-config": "mm-embeddings-cache-producer",
    "llmd-pd-topology-epp-config": "topology-extractor",
    "llmd-sim-e-p-d-epp-config": "always-disagg-multimodal-decider",
    "llmd-sim-e-pd-epp-config": "always-disagg-multimodal-decider",
    "llmd-sim-epp-gpu-config": "dcgm-data-source",
    "llmd-wellknown-predicted-latency-slo": "predicted-latency-producer",
}
# flow control's configs: they load once flow control registers these types, until then they are refused
FLOW = {
    "llmd-sim-program-aware-config": "program-aware-fairness",
    "llmd-soft-reflective-ceiling-epp-config": "soft-reflective-ceiling-policy",
    "llmd-wellknown-flow-control": "round-robin-fairness-policy",
}
# Alpha plugins: refused without --allow-experimental-plugins, as upstream
ALPHA = {"llmd-epp-burst-prefix-cache-config": "burst-prefix-cache-producer",
         "llmd-wellknown-payload-agnostic": "session-affinity-scorer"}
# llm-d's own expectations for its well-lit-path configs (wellknown_configs_test.go): plugins present
# after defaults, auto-created producers included
EXPECTED = {
    "llmd-wellknown-optimized-baseline": {"queue-scorer", "kv-cache-utilization-scorer", "no-hit-lru-scorer",
                                          "prefix-cache-scorer", "approx-prefix-cache-producer", "token-producer"},
    "llmd-wellknown-tiered-prefix-cache-cpu": {"token-producer", "approx-prefix-cache-producer",
                                               "cpu-prefix-cache-producer", "gpu-prefix-cache-scorer",
                                               "cpu-prefix-cache-scorer"},
    "llmd-wellknown-pd-disaggregation": {"disagg-headers-handler", "always-disagg-pd-decider",
                                         "disagg-profile-handler", "prefill-filter", "decode-filter",
                                         "approx-prefix-cache-producer", "token-producer", "active-request-scorer"},
    "llmd-wellknown-payload-agnostic": {"passthrough-parser", "active-request-scorer", "session-affinity-scorer"},
}


def name(path: str) -> str:
    return os.path.basename(path)[:-5]


def test_the_fixture_set_and_its_sources():
    assert len(FIXTURES) >= 30
    for path in FIXTURES:
        first = open(path).readline()
        assert re.match(r"# source: (llm-d/llm-d-router|kubernetes-sigs/gateway-api-inference-extension) \S+.* @ v",
                        first), path


@pytest.mark.parametrize("path", FIXTURES, ids=name)
def test_each_upstream_config_loads_or_is_refused_where_upstream_types_are_missing(path):
    load_all()
    text, n = open(path).read(), name(path)
    missing = REFUSED.get(n) or (FLOW.get(n) if FLOW.get(n) not in REGISTRY else None)
    if missing:
        with pytest.raises(ConfigError, match=f"plugin type '{missing}' \\(llm-d router v0.10\\) is not supported"):
            load(text, n, allow_experimental=True)
        return
    if n in ALPHA:
        with pytest.raises(ConfigError, match=f"type: '{ALPHA[n]}'\\) has Alpha stability level, but command line "
                                              f"flag --allow-experimental-plugins is not set"):
            load(text, n)
    c = load(text, n, allow_experimental=n in ALPHA)
    assert c.profiles and all(p.picker is not None for p in c.profiles) and c.handler is not None
    assert c.parsers and all(isinstance(p, Parser) for p in c.parsers)
    assert EXPECTED.get(n, set()) <= set(c.plugins), sorted(c.plugins)


def test_upstream_defaults_on_a_well_lit_config():
    c = load(open(os.path.join(ROOT, "tests", "fixtures", "upstream", "llmd-wellknown-optimized-baseline.yaml")).read())
    assert [p.type_name for p in c.parsers] == ["openai-parser", "anthropic-parser", "vllmhttp-parser"]
    assert c.handler.type_name == "single-profile-handler" and c.profiles[0].picker.type_name == "max-score-picker"
    (source, extractors), = c.data_layer.sources
    assert source.type_name == "metrics-data-source" and [e.type_name for e in extractors] == ["core-metrics-extractor"]
    weights = {ws.scorer.name: ws.weight for ws in c.profiles[0].scorers}
    assert weights == {"queue-scorer": 2, "kv-cache-utilization-scorer": 2, "prefix-cache-scorer": 3,
                       "no-hit-lru-scorer": 2}


# every type llm-d router v0.10 registers (cmd/epp/runner/runner.go registerInTreePlugins @ v0.10.0)
UPSTREAM_TYPES = """
active-request-scorer agent-identity always-disagg-multimodal-decider always-disagg-pd-decider anthropic-parser
approx-prefix-cache-producer burst-prefix-cache-producer by-label by-label-selector concurrency-detector
context-length-aware core-metrics-extractor data-parallel-profile-handler dcgm-data-source dcgm-extractor decode-filter
destination-endpoint-served-verifier disagg-headers-handler disagg-profile-handler disaggregatedset-rollout-screener
edf-ordering-policy encode-filter endpoint-attribute-filter endpoint-attribute-scorer endpoint-notification-source
fcfs-ordering-policy file-discovery global-strict-fairness-policy header-based-testing-filter
header-label-affinity-scorer header-profile-handler inflight-load-producer k8s-notification-source
kv-cache-utilization-scorer label-selector-filter latency-scorer latency-slo-admitter load-aware-scorer
lora-affinity-scorer max-score-picker metrics-data-source mm-embeddings-cache-producer mm-embeddings-cache-scorer
models-data-extractor models-data-source multicluster-approx-prefix-cache-producer multicluster-file-discovery
multicluster-kv-cache-utilization-scorer multicluster-metrics-data-source multicluster-metrics-extractor
multicluster-prefix-cache-scorer multicluster-queue-scorer multicluster-session-affinity-filter no-hit-lru-scorer
openai-parser p2p-source-producer passthrough-parser pd-profile-handler precise-prefix-cache-producer
precise-prefix-cache-scorer predicted-latency-producer prefill-filter prefill-header-handler prefix-based-pd-decider
prefix-cache-affinity-filter prefix-cache-scorer priority-holdback-policy priority-then-time-eviction-order-policy
probabilistic-admitter program-aware-fairness queue-scorer random-picker request-attribute-reporter
round-robin-fairness-policy running-requests-size-scorer session-affinity-filter session-affinity-scorer
session-id-producer sheddable-eviction-filter single-profile-handler slo-deadline-ordering-policy
slo-headroom-tier-filter soft-reflective-ceiling-policy static-usage-limit-policy token-load-scorer token-producer
tokenizer topology-affinity-filter topology-affinity-scorer topology-extractor utilization-detector
utilization-filter vertexai-parser vllmgrpc-parser vllmhttp-parser weighted-random-picker
""".split()
ALPHA_TYPES = """agent-identity burst-prefix-cache-producer dcgm-data-source dcgm-extractor
disaggregatedset-rollout-screener endpoint-attribute-filter endpoint-attribute-scorer header-label-affinity-scorer
header-profile-handler multicluster-approx-prefix-cache-producer multicluster-file-discovery
multicluster-kv-cache-utilization-scorer multicluster-metrics-data-source multicluster-metrics-extractor
multicluster-prefix-cache-scorer multicluster-queue-scorer multicluster-session-affinity-filter p2p-source-producer
priority-holdback-policy priority-then-time-eviction-order-policy session-affinity-filter session-affinity-scorer
sheddable-eviction-filter soft-reflective-ceiling-policy topology-affinity-filter topology-affinity-scorer
topology-extractor utilization-filter""".split()


def test_every_upstream_type_is_registered_or_listed_as_unsupported():
    load_all()
    assert len(UPSTREAM_TYPES) == 96
    accounted = set(REGISTRY) | set(UNSUPPORTED)
    assert set(UPSTREAM_TYPES) <= accounted, sorted(set(UPSTREAM_TYPES) - accounted)
    assert not set(REGISTRY) & set(UNSUPPORTED)
    ours = {t for t in REGISTRY if t.startswith("epp-")}      # our own plugins: named apart, documented
    assert set(REGISTRY) - ours <= set(UPSTREAM_TYPES)        # no invented upstream-looking names
    assert not ours & set(UPSTREAM_TYPES)
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    assert all(f"`{t}`" in readme for t in ours), sorted(t for t in ours if f"`{t}`" not in readme)
    for t in UPSTREAM_TYPES:                                  # upstream's stability levels
        if t in REGISTRY:
            assert (REGISTRY[t].stability == "alpha") == (t in ALPHA_TYPES), t


def test_the_docs_list_the_unsupported_types():
    doc = open(os.path.join(ROOT, "docs", "unsupported-plugins.md")).read()
    listed = set(re.findall(r"`([a-z0-9-]+)`", doc))
    assert set(UNSUPPORTED) <= listed, sorted(set(UNSUPPORTED) - listed)
    load_all()
    have = len(set(REGISTRY) & set(UPSTREAM_TYPES))
    assert f"epp registers {have} of them" in doc and f"The {len(UNSUPPORTED)} below" in doc   # the counts stay true
