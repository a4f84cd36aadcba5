"""EndpointPickerConfig decoded level by level as llm-d router v0.10 decodes it: refused where upstream
refuses (naming the field), loaded with one warning naming what is ignored where upstream ignores it,
deprecated forms converted, defaults added, and every tokenizer setting either working or refused."""
import logging

import pytest

from epp.scheduling.config import ConfigError, load

HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"


def cfg(body: str, **kw):
    return load(HEAD + body, "t", **kw)


@pytest.mark.parametrize("body, message", [
    # strict at every level of the API types
    ("data: {}\nplugins: [{type: queue-scorer}]\n", "t: unknown field 'data'"),
    ("metadata: {name: x}\n", "t: unknown field 'metadata'"),
    ("plugins: [{type: queue-scorer, args: {}}]\n", r"plugins\[0\]: unknown field 'args'"),
    ("plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a, plugins: [], scorers: []}]\n",
     r"schedulingProfiles\[0\]: unknown field 'scorers'"),
    ("plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a, plugins: [{pluginRef: queue-scorer, w: 1}]}]\n",
     r"plugins\[0\]: unknown field 'w'"),
    ("dataLayer: {peerDiscovery: {pluginRef: x}}\n", "dataLayer: unknown field 'peerDiscovery'"),
    ("requestHandler: {parsers: [], extra: 1}\n", "requestHandler: unknown field 'extra'"),
    ("requestHandler: {parsers: [{pluginRef: openai-parser, weight: 1}]}\n", r"parsers\[0\]: unknown field 'weight'"),
    ("saturationDetector: {pluginRef: x, queueDepthThreshold: 1}\n", "saturationDetector: unknown field 'queueDepthThreshold'"),
    ("parser: {name: openai-parser}\n", "parser: unknown field 'name'"),
    ("plugins: [{type: queue-scorer}]\nplugins: []\n", "duplicate key 'plugins'"),
    ("plugins:\n- type: queue-scorer\n  type: kv-cache-utilization-scorer\n", "duplicate key 'type'"),
    # feature gates: only those llm-d v0.10 or GIE v1.5 registers; values as Go's ParseBool
    ("featureGates: [prepareDataPlugins]\n", "feature gate 'prepareDataPlugins' is unknown or unregistered"),
    ("featureGates: ['flowControl=maybe']\n", "'maybe' is not a valid value for the feature gate flowControl"),
    # references
    ("plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a, plugins: [{weight: 2}]}]\n",
     r"schedulingProfiles\[a\].plugins\[0\] is missing a 'pluginRef'"),
    ("plugins: [{type: queue-scorer}]\nschedulingProfiles: [{plugins: []}]\n", r"schedulingProfiles\[0\] is missing a name"),
    ("plugins: [{type: queue-scorer}, {type: single-profile-handler}]\nschedulingProfiles:\n"
     "- {name: a, plugins: [{pluginRef: queue-scorer}]}\n- {name: b, plugins: [{pluginRef: queue-scorer}]}\n",
     "SingleProfileHandler cannot support multiple scheduling profiles"),
    ("requestHandler: {parsers: [{pluginRef: my-parser}]}\n", "parser references undefined plugin 'my-parser'"),
    ("plugins: [{type: queue-scorer}]\nrequestHandler: {parsers: [{pluginRef: queue-scorer}]}\n",
     "the plugin 'queue-scorer' \\(queue-scorer\\) is not a parser plugin"),
    ("flowControl: {saturationDetector: {pluginRef: nope}}\n", "saturation detector references undefined plugin 'nope'"),
    ("flowControl: {saturationDetector: {}}\n", "saturation detector plugin reference is empty"),
    ("plugins: [{type: queue-scorer}]\ndataLayer: {sources: [{pluginRef: queue-scorer}]}\n",
     r"sources\[0\]: the plugin 'queue-scorer' is not a data source"),
    ("plugins: [{type: metrics-data-source}]\ndataLayer: {sources: [{pluginRef: metrics-data-source, "
     "extractors: [{pluginRef: nope}]}]}\n", r"extractors\[0\]: the plugin 'nope' is not registered"),
    ("dataLayer: {crossReplicaSyncerPluginRef: s}\n", "the plugin 's' is not a cross-replica syncer"),
    ("plugins: [{type: metrics-data-source, parameters: {scheme: https, clientCertPath: c}}]\n",
     "clientCertPath and clientKeyPath must be set together"),
    ("plugins: [{type: metrics-data-source, parameters: {port: 70000}}]\n", "invalid port 70000"),
    ("plugins: [{type: core-metrics-extractor, parameters: {engineConfigs: [{name: x, queuedSpec: q}]}}]\n",
     r"engineConfigs\[0\]: unknown field 'queuedSpec'"),
    # an upstream type this EPP lacks: refused with the reason
    ("plugins: [{type: latency-scorer}]\n", "'latency-scorer' \\(llm-d router v0.10\\) is not supported by this EPP: "
                                           "needs llm-d's latency-predictor sidecars"),
    ("plugins: [{type: prefix-cache-affinity-filter, parameters: {ttftSource: latencyPredictor}}]\n",
     "ttftSource latencyPredictor needs llm-d's latency-predictor sidecars"),
])
def test_refused_where_upstream_refuses_naming_the_field(body, message):
    with pytest.raises(ConfigError, match=message):
        cfg(body)


def test_ignored_where_upstream_ignores_with_a_warning(caplog):
    caplog.set_level(logging.WARNING)
    c = cfg("featureGates: [dataLayer, enableLegacyMetrics]\n"
            "plugins:\n- {type: queue-scorer, parameters: {foo: 1}}\n- type: approx-prefix-cache-producer\n"
            "schedulingProfiles:\n- name: d\n  plugins: [{pluginRef: queue-scorer}, {pluginRef: approx-prefix-cache-producer}]\n")
    text = caplog.text
    assert "takes no parameters; ignoring ['foo']" in text                                    # parameter-less plugin
    assert "is not a filter, scorer or picker: it takes no part in the profile" in text     # producer in a profile
    assert "feature gate 'dataLayer' is GIE v1.5's" in text and "'enableLegacyMetrics'" in text
    assert [ws.scorer.name for ws in c.profiles[0].scorers] == ["queue-scorer"]


def test_feature_gates_of_both_upstreams_and_their_values():
    c = cfg("featureGates: [flowControl, 'haPopulateNonLeaderDatastore=F', dataLayer]\n")
    assert c.feature_gates == {"flowControl": True, "haPopulateNonLeaderDatastore": False, "dataLayer": True,
                               "enableLegacyMetrics": False}
    assert cfg("").feature_gates["haPopulateNonLeaderDatastore"] is True


def test_deprecated_fields_and_api_group_convert(caplog):
    caplog.set_level(logging.WARNING)
    c = load("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
             "plugins:\n- {name: sd, type: utilization-detector}\n- {type: queue-scorer}\n- {type: passthrough-parser}\n"
             "saturationDetector: {pluginRef: sd}\nparser: {pluginRef: passthrough-parser}\n"
             "schedulingProfiles: [{name: d, plugins: [{pluginRef: queue-scorer}]}]\n", "old")
    assert c.saturation is c.plugins["sd"] and [p.name for p in c.parsers] == ["passthrough-parser"]
    assert c.flow_control == {"saturationDetector": {"pluginRef": "sd"}}
    for what in ("apiVersion inference.networking.x-k8s.io/v1alpha1 is deprecated", "top-level saturationDetector",
                 "top-level parser"):
        assert what in caplog.text
    # the newer field wins when both are set
    c = cfg("plugins:\n- {name: a, type: utilization-detector}\n- {name: b, type: utilization-detector}\n"
            "- {type: queue-scorer}\nsaturationDetector: {pluginRef: a}\nflowControl: {saturationDetector: {pluginRef: b}}\n"
            "schedulingProfiles: [{name: d, plugins: [{pluginRef: queue-scorer}]}]\n")
    assert c.saturation is c.plugins["b"]


def test_deprecated_plugin_types_load_with_a_deprecation_line(caplog):
    caplog.set_level(logging.WARNING)
    c = cfg("plugins:\n- {type: by-label-selector, parameters: {matchLabels: {a: b}}}\n- type: tokenizer\n"
            "- {type: by-label, parameters: {label: x, validValues: [y]}}\n")
    assert c.plugins["by-label-selector"].type_name == "label-selector-filter"
    assert c.plugins["tokenizer"].type_name == "token-producer"
    assert caplog.text.count("DEPRECATION: plugin type") == 3


def test_parsers_default_auto_create_and_stop_at_a_catch_all(caplog):
    caplog.set_level(logging.WARNING)
    assert [p.type_name for p in cfg("").parsers] == ["openai-parser", "anthropic-parser", "vllmhttp-parser"]
    c = cfg("requestHandler:\n  parsers: [{pluginRef: anthropic-parser}, {pluginRef: passthrough-parser}, "
            "{pluginRef: openai-parser}]\n")
    # named but undeclared parsers are created by type; nothing after the catch-all is ever asked
    assert [p.type_name for p in c.parsers] == ["anthropic-parser", "passthrough-parser"]
    assert "come after the catch-all parser" in caplog.text


def test_data_layer_defaults_opt_out_and_discovery(tmp_path):
    c = cfg("")
    (src, ext), = c.data_layer.sources
    assert (src.type_name, [e.type_name for e in ext]) == ("metrics-data-source", ["core-metrics-extractor"])
    assert cfg("dataLayer: {injectDefaults: false}\n").data_layer.sources == []
    c = cfg("plugins:\n- {type: metrics-data-source, parameters: {path: /m, port: 9000, interval: 1s}}\n"
            "- type: core-metrics-extractor\n- type: endpoint-notification-source\n- type: precise-prefix-cache-producer\n"
            f"- {{type: file-discovery, parameters: {{path: {tmp_path}/eps.yaml, watchFile: true}}}}\n"
            "dataLayer:\n  sources:\n  - {pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}\n"
            "  - {pluginRef: endpoint-notification-source, extractors: [{pluginRef: precise-prefix-cache-producer}]}\n"
            "  discovery: {pluginRef: file-discovery}\n  crossReplicaSyncInterval: 5s\n")
    sources = c.data_layer.sources
    assert len(sources) == 2 and sources[0][0].path == "/m" and sources[0][0].port == 9000
    assert sources[0][0].scrape_interval(0.05) == pytest.approx(1.0)
    assert sources[1][1][0].type_name == "precise-prefix-cache-producer"       # any plugin may be an extractor
    assert c.data_layer.discovery.watch and c.data_layer.cross_replica_sync_interval == 5.0


def test_alpha_plugins_need_the_flag():
    body = "plugins:\n- {type: utilization-filter, parameters: {conditions: [{metric: waiting-queue, maxValue: 3}]}}\n"
    with pytest.raises(ConfigError, match="plugin 'utilization-filter' \\(type: 'utilization-filter'\\) has Alpha "
                                          "stability level, but command line flag --allow-experimental-plugins is not set"):
        cfg(body)
    assert cfg(body, allow_experimental=True).profiles[0].filters[0].type_name == "utilization-filter"


def test_default_producers_are_created_as_upstream():
    c = cfg("plugins:\n- type: token-load-scorer\n- type: prefix-cache-affinity-filter\n")
    for name in ("inflight-load-producer", "approx-prefix-cache-producer", "token-producer"):
        assert name in c.plugins
    assert c.plugins["token-load-scorer"].producer is c.plugins["inflight-load-producer"]
    # a named producer does not stand in for the default one: consumers without a name read the default
    c = cfg("plugins:\n- {name: cpu, type: approx-prefix-cache-producer, parameters: {autoTune: false}}\n"
            "- {name: gpu, type: prefix-cache-scorer}\n- {name: cpu-s, type: prefix-cache-scorer, "
            "parameters: {prefixMatchInfoProducerName: cpu}}\n")
    assert c.plugins["gpu"].producer is c.plugins["approx-prefix-cache-producer"]
    assert c.plugins["cpu-s"].producer is c.plugins["cpu"]


# ---------------------------------------------------------------- tokenizer settings

def test_token_producer_backends_as_upstream(tmp_path):
    tp = cfg("plugins:\n- {type: token-producer, parameters: {modelName: m}}\n").plugins["token-producer"]
    assert tp.render is not None and tp.render.url.startswith("http://localhost:8000")   # modelName alone: vllm
    assert not cfg("plugins:\n- type: token-producer\n").plugins["token-producer"].real           # estimate
    est = {"image": {"mode": "static", "static": {"staticToken": 256}},
           "video": {"frames": {"mode": "sampled", "sampled": {"sampleFPS": 2}}}}
    assert not cfg(f"plugins:\n- {{type: token-producer, parameters: {{estimate: {est}}}}}\n").plugins[
        "token-producer"].real


@pytest.mark.parametrize("params, message", [
    ("{vllm: {url: 'http://x'}}", "'modelName' must be specified"),
    ("{modelName: m, estimate: {}}", "only one of 'estimate', 'vllm', or 'udsTokenizerConfig' may be set"),
    ("{modelName: m, udsTokenizerConfig: {socketFile: /tmp/t.sock}}",
     "only one of 'estimate', 'vllm', or 'udsTokenizerConfig' may be set .modelName selects vllm.; the UDS "
     "tokenizer sidecar is deprecated: use vllm"),
    ("{udsTokenizerConfig: {socketFile: /tmp/t.sock}}", "'modelName' must be specified"),
    ("{estimate: {image: {mode: exact}}}", "estimate.image.mode must be 'dynamic' or 'static'"),
    ("{estimate: {audio: {}}}", "unknown field estimate.audio"),
    ("{udsTokenizerConfig: {socket: x}}", "udsTokenizerConfig takes socketFile, useTCP, modelTokenizerMap"),
])
def test_token_producer_settings_upstream_refuses(params, message):
    with pytest.raises(ConfigError, match=message):
        cfg(f"plugins:\n- {{type: token-producer, parameters: {params}}}\n")


def test_uds_tokenizer_without_socket_is_ignored_with_a_warning(caplog):
    caplog.set_level(logging.WARNING)
    tp = cfg("plugins:\n- {type: token-producer, parameters: {udsTokenizerConfig: {useTCP: true}}}\n").plugins[
        "token-producer"]
    assert not tp.real and "udsTokenizerConfig without socketFile is ignored" in caplog.text


def test_precise_tokenizer_settings_work_or_stop_the_epp():
    from vllm_sim.tokenizer import DEFAULT_DIR
    # the producer never tokenizes itself (as upstream)
    with pytest.raises(ConfigError, match="indexerConfig.tokenizersPoolConfig is not supported; configure a "
                                          "token-producer plugin instead"):
        cfg("plugins:\n- {type: precise-prefix-cache-producer, parameters: {indexerConfig: "
            "{tokenizersPoolConfig: {modelName: m}}}}\n")
    # the deprecated scorer's UDS pool: the same tokenizer files, loaded in process
    c = cfg("plugins:\n- type: precise-prefix-cache-scorer\n  parameters:\n    indexerConfig:\n"
            "      tokenizersPoolConfig: {modelName: m, workersCount: 4, uds: {socketFile: /tmp/x.sock, "
            f"modelTokenizerMap: {{m: {DEFAULT_DIR}}}}}}}\n")
    scorer = c.plugins["precise-prefix-cache-scorer"]
    assert scorer.producer.tokens is scorer.tokenizer and scorer.tokenizer.real
    assert scorer.tokenizer in scorer.sub_plugins()
    # ... or a refusal that says what to set: never a silent approximation
    with pytest.raises(ConfigError, match="asks the UDS tokenizer sidecar for 'm', which this EPP does not use; "
                                          "set uds.modelTokenizerMap.m"):
        cfg("plugins:\n- {type: precise-prefix-cache-scorer, parameters: {indexerConfig: "
            "{tokenizersPoolConfig: {modelName: m, uds: {socketFile: /tmp/x.sock}}}}}\n")
    with pytest.raises(ConfigError, match="unknown field indexerConfig.tokenizersPoolConfig.hf"):
        cfg("plugins:\n- {type: precise-prefix-cache-scorer, parameters: {indexerConfig: "
            "{tokenizersPoolConfig: {modelName: m, hf: {tokenizersCacheDir: /x}}}}}\n")


def test_precise_producer_upstream_fields():
    p = cfg("plugins:\n- type: precise-prefix-cache-producer\n  parameters:\n"
            "    tokenProcessorConfig: {blockSizeTokens: 64, hashSeed: '42'}\n"
            "    indexerConfig: {kvBlockIndexConfig: {inMemoryConfig: {size: 1000}, enableMetrics: true},\n"
            "                    kvCacheBackendConfigs: [{name: gpu, weight: 1.0}, {name: cpu, weight: 0.5}]}\n"
            "    kvEventsConfig: {engineType: vllm, discoverPods: true, podDiscoveryConfig: {podLabelSelector: app=v, "
            "socketPort: 5558, replaySocketPort: 5559}}\n").plugins["precise-prefix-cache-producer"]
    assert p.block_size == 64 and p.hash_seed == "42" and p.tier_weights == {"GPU": 1.0, "CPU": 0.5}
    assert (p.pod_port, p.replay_port, p.max_keys) == (5558, 5559, 1000)
    with pytest.raises(ConfigError, match="redisConfig is not supported here"):
        cfg("plugins:\n- {type: precise-prefix-cache-producer, parameters: {indexerConfig: {kvBlockIndexConfig: "
            "{redisConfig: {address: 'r:6379'}}}}}\n")
    with pytest.raises(ConfigError, match="engineType 'sglang' is not supported here"):
        cfg("plugins:\n- {type: precise-prefix-cache-producer, parameters: {kvEventsConfig: {engineType: sglang}}}\n")
