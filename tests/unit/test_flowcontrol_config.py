"""The flowControl section (upstream's names and defaults), the plugins it names, the gate."""
import logging

import pytest

from epp.flowcontrol.config import check_shape, decode, settings_ignored
from epp.flowcontrol.quantity import parse_quantity
from epp.scheduling.config import ConfigError, load

HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"


def cfg(text: str):
    c = load(HEAD + text, allow_experimental=True)   # priority-holdback-policy is Alpha upstream
    return c, decode(c.flow_control, c.plugins, c.source)


def test_defaults_without_a_section():
    _, fc = cfg("featureGates: [flowControl]\n")
    assert (fc.max_requests, fc.max_bytes, fc.default_ttl, fc.no_endpoint_ttl) == (0, 0, 60.0, 60.0)
    assert list(fc.bands) == [0]
    b = fc.bands[0]
    assert (b.max_requests, b.max_bytes) == (5000, 1_000_000_000)
    assert (b.fairness.type_name, b.ordering.type_name) == ("global-strict-fairness-policy", "fcfs-ordering-policy")
    assert fc.usage_limit.type_name == "static-usage-limit-policy" and fc.usage_limit.threshold == 1.0
    assert not fc.enable_eviction


def test_a_full_section_as_upstream_documents_it():
    c, fc = cfg("""featureGates: [flowControl]
plugins:
- type: round-robin-fairness-policy
- {name: edf, type: edf-ordering-policy}
- {name: hold, type: priority-holdback-policy, parameters: {minCeiling: 0.2, domain: value}}
- {type: utilization-detector, parameters: {queueDepthThreshold: 3}}
flowControl:
  maxRequests: 1k
  maxBytes: 1Gi
  defaultRequestTTL: 30s
  priorityBands:
  - {priority: 10, maxRequests: 100, fairnessPolicyRef: round-robin-fairness-policy, orderingPolicyRef: edf}
  - {priority: -5, maxBytes: "500M"}
  defaultPriorityBand: {maxRequests: 7, fairnessPolicyRef: round-robin-fairness-policy}
  defaultNegativePriorityBand: {maxRequests: 3}
  usageLimitPolicyPluginRef: hold
  saturationDetector: {pluginRef: utilization-detector}
  enableEviction: true
""")
    assert (fc.max_requests, fc.max_bytes) == (1000, 1 << 30)
    assert fc.default_ttl == 30.0 and fc.no_endpoint_ttl == 30.0    # unset: follows defaultRequestTTL
    assert sorted(fc.bands) == [-5, 0, 10]
    b10 = fc.bands[10]
    assert (b10.max_requests, b10.fairness.name, b10.ordering.name) == (100, "round-robin-fairness-policy", "edf")
    # a listed band does not inherit the template: system defaults for what it omits
    assert fc.bands[-5].max_requests == 5000 and fc.bands[-5].max_bytes == 500_000_000
    # band 0, unlisted, is the template
    assert fc.bands[0].max_requests == 7 and fc.bands[0].fairness.name == "round-robin-fairness-policy"
    assert fc.template(4).max_requests == 7 and fc.template(-2).max_requests == 3
    assert fc.usage_limit.name == "hold" and fc.enable_eviction
    assert c.saturation.queue == 3


def test_no_endpoint_ttl_set_alone_and_zero():
    _, fc = cfg("featureGates: [flowControl]\nflowControl: {noEndpointRequestTTL: 5m, defaultRequestTTL: 0s}\n")
    assert (fc.default_ttl, fc.no_endpoint_ttl) == (0.0, 300.0)


@pytest.mark.parametrize("section, why", [
    ("{maxRequest: 5}", "unknown field 'maxRequest'"),
    ("{maxBytes: -1}", "must be non-negative"),
    ("{maxBytes: lots}", "not a quantity"),
    ("{defaultRequestTTL: soon}", "must be a duration"),
    ("{defaultRequestTTL: -1s}", "cannot be negative"),
    ("{priorityBands: [{priority: 1}, {priority: 1}]}", "duplicate priority level 1"),
    ("{priorityBands: [{maxRequests: 1}]}", "priority: must be an integer"),
    ("{priorityBands: [{priority: 1, fairnessPolicyRef: nope}]}", "plugin 'nope' not found"),
    ("{priorityBands: [{priority: 1, orderingPolicyRef: global-strict-fairness-policy}]}", "is not a OrderingPolicy"),
    ("{usageLimitPolicyPluginRef: fcfs-ordering-policy}", "is not a UsageLimitPolicy"),
    ("{enableEviction: yes please}", "must be true or false"),
])
def test_errors_name_the_field(section, why):
    with pytest.raises(ConfigError, match=why):
        cfg(f"featureGates: [flowControl]\nflowControl: {section}\n")


def test_policy_parameters_are_checked():
    with pytest.raises(ConfigError, match="minCeiling is required"):
        load(HEAD + "plugins: [{type: priority-holdback-policy}]\n")
    with pytest.raises(ConfigError, match="strictly less than maxCeiling"):
        load(HEAD + "plugins: [{type: priority-holdback-policy, parameters: {minCeiling: 0.5, maxCeiling: 0.5}}]\n")
    with pytest.raises(ConfigError, match="concurrencyMode"):
        load(HEAD + "plugins: [{type: concurrency-detector, parameters: {concurrencyMode: bytes}}]\n")


def test_concurrency_detector_gets_the_default_inflight_producer_or_the_named_one():
    c = load(HEAD + "plugins: [{type: concurrency-detector}]\n")
    assert c.plugins["concurrency-detector"].producer is c.plugins["inflight-load-producer"]
    with pytest.raises(ConfigError, match="names no in-flight load producer"):
        load(HEAD + "plugins: [{type: concurrency-detector, parameters: {inFlightLoadProducerName: mine}}]\n")
    c = load(HEAD + "plugins: [{name: mine, type: inflight-load-producer}, "
                    "{type: concurrency-detector, parameters: {inFlightLoadProducerName: mine}}]\n")
    assert c.plugins["concurrency-detector"].producer is c.plugins["mine"] and "inflight-load-producer" not in c.plugins


def test_quantities():
    assert [parse_quantity(v) for v in (5, "5", "1k", "1Ki", "1.5k", "1e3", "500m", "2G")] == \
           [5, 5, 1000, 1024, 1500, 1000, 1, 2_000_000_000]
    for bad in (True, "1 k", "k", "1KB"):
        with pytest.raises(ValueError):
            parse_quantity(bad)


def test_gate_off_checks_the_shape_and_warns_about_ignored_settings(caplog):
    from types import SimpleNamespace

    from epp.datalayer.store import EndpointStore
    from epp.runner.serve import flow_control
    args = SimpleNamespace(refresh_metrics_interval=0.05, metrics_staleness_threshold=2.0)
    c = load(HEAD + "flowControl: {maxRequests: 10}\n")
    with caplog.at_level(logging.WARNING):
        assert flow_control(args, c, c.saturation, EndpointStore(), "p") is None
    assert "flowControl config section is set but the flowControl feature gate is disabled" in caplog.text
    caplog.clear()
    c = load(HEAD + "flowControl: {enableEviction: true}\n")    # alone: silent, as upstream
    with caplog.at_level(logging.WARNING):
        flow_control(args, c, c.saturation, EndpointStore(), "p")
    assert not caplog.text
    assert settings_ignored({"priorityBands": [{"priority": 1}]}) and not settings_ignored({"saturationDetector": {}})
    with pytest.raises(ConfigError, match="unknown field"):
        check_shape({"maxRequests": 1, "bands": []})
    c = load(HEAD + "featureGates: [flowControl=false]\nflowControl: {maxBytes: {a: 1}}\n")
    with pytest.raises(ConfigError, match="not a quantity"):
        flow_control(args, c, c.saturation, EndpointStore(), "p")


def test_the_example_config_decodes():
    import os
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    c = load(open(os.path.join(root, "config", "flow-control.yaml")).read(), "flow-control.yaml")
    fc = decode(c.flow_control, c.plugins, c.source)
    assert c.feature_gates["flowControl"] and fc.default_ttl == 30 and fc.max_bytes == 2 << 30
    assert fc.template(-1).max_requests == 100 and fc.bands[0].fairness.type_name == "round-robin-fairness-policy"
    assert c.saturation.type_name == "utilization-detector"
