"""EndpointPickerConfig: the upstream (llm-d router v0.10 / GIE v1.5) scheduling config file, decoded
as llm-d router v0.10's loader decodes it.

    apiVersion: llm-d.ai/v1alpha1          # or inference.networking.x-k8s.io/v1alpha1 (deprecated)
    kind: EndpointPickerConfig
    featureGates: [flowControl, haPopulateNonLeaderDatastore=false]
    plugins: [{name, type, parameters}]
    schedulingProfiles: [{name, plugins: [{pluginRef, weight}]}]
    requestHandler: {parsers: [{pluginRef}]}
    dataLayer: {injectDefaults, sources: [{pluginRef, extractors: [{pluginRef}]}], discovery: {pluginRef}, ...}
    flowControl: {...}                     # decoded by flow control; only saturationDetector is read here
    saturationDetector: {pluginRef}        # deprecated: becomes flowControl.saturationDetector
    parser: {pluginRef}                    # deprecated: becomes requestHandler.parsers

Upstream decodes strictly: an unknown field or a duplicate key at any level of the document is an
error, and so is an unknown parameter of a plugin whose factory reads its parameters. Where upstream
ignores something (parameters of a plugin that takes none, a profile entry that is neither filter,
scorer nor picker, a GIE-only feature gate) it loads with one warning naming it. Defaults as
upstream: name = type; weight 1; no profiles -> one "default" profile with every filter, scorer and
picker (in file order); a profile without a picker gets the first configured picker, else
max-score-picker; one profile and no handler -> single-profile-handler; no parsers -> openai,
anthropic and vllmhttp; consumers of data nobody produces get the default producer (approximate
prefix, in-flight load, token-producer); the metrics source and extractor are added unless
dataLayer.injectDefaults is false. Alpha-stability plugins need --allow-experimental-plugins.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..durations import parse_duration
from .framework import (ALPHA, DEFAULT_DETECTOR, DEFAULT_HANDLER, DEFAULT_INFLIGHT, DEFAULT_METRICS_EXTRACTOR, DEFAULT_METRICS_SOURCE,
                        DEFAULT_PARSERS, DEFAULT_PICKER, DEFAULT_PRODUCER, DEFAULT_TOKENS, REGISTRY, BindsPlugins,
                        DataSource, Discovery, Filter, InFlightLoadConsumer, Parser, Picker, Plugin,
                        PrefixMatchConsumer, ProfileHandler, SaturationDetector, Scorer, TokenizedPromptConsumer)
from .plugins import load_all
from .profile import Profile, WeightedScorer

log = logging.getLogger(__name__)

API_VERSIONS = ("llm-d.ai/v1alpha1", "inference.networking.x-k8s.io/v1alpha1")
KIND = "EndpointPickerConfig"
# llm-d router v0.10 registers flowControl and haPopulateNonLeaderDatastore; GIE v1.5 registers
# flowControl, dataLayer and enableLegacyMetrics. A drop-in for both accepts all four.
FEATURE_GATES = {"flowControl": False, "haPopulateNonLeaderDatastore": True, "dataLayer": False,
                 "enableLegacyMetrics": False}
GIE_ONLY_GATES = {
    "dataLayer": "GIE v1.5's switch for the data layer, which is always on here",
    "enableLegacyMetrics": "GIE v1.5's legacy model-server scraping, which this EPP does not have",
}
_TOP = {"apiVersion", "kind", "featureGates", "plugins", "schedulingProfiles", "dataLayer", "flowControl",
        "requestHandler", "saturationDetector", "parser"}
_PLUGIN = {"name", "type", "parameters"}
_PROFILE = {"name", "plugins"}
_REF = {"pluginRef", "weight"}
_DATA_LAYER = {"injectDefaults", "sources", "discovery", "crossReplicaSyncerPluginRef", "crossReplicaSyncInterval"}
_FLOW = {"maxBytes", "maxRequests", "defaultRequestTTL", "noEndpointRequestTTL", "defaultPriorityBand",
         "defaultNegativePriorityBand", "priorityBands", "usageLimitPolicyPluginRef", "saturationDetector",
         "enableEviction"}
# llm-d router v0.10 types this EPP does not have, and why (docs/unsupported-plugins.md lists the same):
# a config naming one is refused with the reason, not with "not registered"
_SIDECAR = "needs llm-d's latency-predictor sidecars (training and prediction servers), which this EPP does not run"
_MM = "needs a multimodal encoder stage (encoder-cache hashing of images/audio), which this EPP does not have"
_MULTI = "part of llm-d's multi-cluster routing (pools of peer clusters), which this EPP does not have"
_FLOW_MISSING = "a flow-control policy this EPP's flow control does not have (docs/flow-control.md)"
UNSUPPORTED = {
    "predicted-latency-producer": _SIDECAR, "latency-scorer": _SIDECAR, "latency-slo-admitter": _SIDECAR,
    "slo-headroom-tier-filter": _SIDECAR,
    "mm-embeddings-cache-producer": _MM, "mm-embeddings-cache-scorer": _MM, "always-disagg-multimodal-decider": _MM,
    "multicluster-approx-prefix-cache-producer": _MULTI, "multicluster-file-discovery": _MULTI,
    "multicluster-kv-cache-utilization-scorer": _MULTI, "multicluster-metrics-data-source": _MULTI,
    "multicluster-metrics-extractor": _MULTI, "multicluster-prefix-cache-scorer": _MULTI,
    "multicluster-queue-scorer": _MULTI, "multicluster-session-affinity-filter": _MULTI,
    "vllmgrpc-parser": "parses gRPC request bodies (vLLM's gRPC engine API over h2c); this EPP reads HTTP JSON bodies",
    "vertexai-parser": "parses Vertex AI's gRPC request bodies (over h2c); this EPP reads HTTP JSON bodies",
    "dcgm-data-source": "scrapes NVIDIA DCGM exporter GPU metrics, which this EPP does not collect",
    "dcgm-extractor": "reads NVIDIA DCGM exporter GPU metrics, which this EPP does not collect",
    "topology-extractor": "reads the node topology (host, rack, zone, region) of each pod's node, which this EPP does "
                          "not watch",
    "topology-affinity-filter": "needs topology-extractor's node topology, which this EPP does not watch",
    "topology-affinity-scorer": "needs topology-extractor's node topology, which this EPP does not watch",
    "disaggregatedset-rollout-screener": "screens requests by DisaggregatedSet rollout state (a CRD this EPP does "
                                         "not watch)",
    "request-attribute-reporter": "evaluates CEL expressions over the response's usage and reports them in "
                                  "response dynamic metadata; this EPP has neither",
    "agent-identity": "sets the flow-control fairness id from agent session headers (Claude Code, OpenCode, "
                      "Codex), which this EPP does not read",
    "program-aware-fairness": _FLOW_MISSING, "slo-deadline-ordering-policy": _FLOW_MISSING,
    "soft-reflective-ceiling-policy": _FLOW_MISSING,
    "sheddable-eviction-filter": "upstream's eviction internals, not configurable there either; enableEviction "
                                 "turns this EPP's eviction on",
    "priority-then-time-eviction-order-policy": "upstream's eviction internals, not configurable there either; "
                                                "enableEviction turns this EPP's eviction on",
}


class ConfigError(ValueError):
    pass


@dataclass
class DataLayer:
    """What dataLayer configures (after upstream's defaults): the sources with their extractors, and
    a discovery plugin that replaces Kubernetes discovery."""

    sources: list[tuple[DataSource, list[Plugin]]] = field(default_factory=list)
    discovery: Discovery | None = None
    cross_replica_sync_interval: float | None = None


@dataclass
class SchedulingConfig:
    """What the config file decides: the plugins, the profiles, the handler, the parsers, the saturation
    detector, the data layer and the feature gates."""

    plugins: dict[str, Plugin]
    profiles: list[Profile]
    handler: ProfileHandler
    saturation: SaturationDetector | None = None
    feature_gates: dict[str, bool] = field(default_factory=dict)
    parsers: list[Parser] = field(default_factory=list)
    data_layer: DataLayer = field(default_factory=DataLayer)
    flow_control: dict | None = None   # the raw flowControl section, for epp/flowcontrol to decode
    source: str = "config"

    def describe(self) -> str:
        parts = []
        for p in self.profiles:
            items = [f"filter {f.name}" for f in p.filters] + [f"{ws.scorer.name} x{ws.weight:g}" for ws in p.scorers]
            parts.append(f"profile {p.name!r}: {', '.join(items) or 'no filters or scorers'}; picker {p.picker.name}")
        return f"{self.handler.name}; " + "; ".join(parts)


# ---------------------------------------------------------------- document level

class _StrictLoader(yaml.SafeLoader):
    """YAML as the Kubernetes strict decoder reads it: a key given twice in one mapping is an error."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _mapping(v: Any, where: str, keys: set[str]) -> dict:
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: must be a mapping, got {type(v).__name__}")
    unknown = [k for k in v if k not in keys]
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; allowed: {', '.join(sorted(keys))}")
    return v


def _list(v: Any, where: str) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ConfigError(f"{where}: must be a list, got {type(v).__name__}")
    return v


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{where}: must be a non-empty string, got {v!r}")
    return v


def _opt_str(v: Any, where: str) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise ConfigError(f"{where}: must be a string, got {v!r}")
    return v


def parse_text(text: str, source: str = "config") -> dict:
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if doc is None:
        raise ConfigError(f"{source}: empty document; expected kind: {KIND}")
    doc = _mapping(doc, source, _TOP)
    if doc.get("kind") != KIND:
        raise ConfigError(f"{source}: kind must be {KIND!r}, got {doc.get('kind')!r}")
    if doc.get("apiVersion") not in API_VERSIONS:
        raise ConfigError(f"{source}: apiVersion must be one of {list(API_VERSIONS)}, got {doc.get('apiVersion')!r}")
    return doc


def _convert_deprecated(doc: dict, source: str) -> None:
    """Upstream's conversions of deprecated fields: the top-level saturationDetector and parser move
    into flowControl and requestHandler (the newer field wins when both are set)."""
    if doc["apiVersion"] != API_VERSIONS[0]:
        log.warning("%s: DEPRECATION: apiVersion %s is deprecated; use %s", source, doc["apiVersion"], API_VERSIONS[0])
    old = doc.get("saturationDetector")
    if old is not None:
        _mapping(old, f"{source}: saturationDetector", {"pluginRef"})
        log.warning("%s: DEPRECATION: top-level saturationDetector is deprecated, use flowControl.saturationDetector",
                    source)
        flow = doc.get("flowControl")
        if flow is None:
            flow = doc["flowControl"] = {}
        if isinstance(flow, dict) and flow.get("saturationDetector") is None:
            flow["saturationDetector"] = old
    parser = doc.get("parser")
    if parser is not None:
        _mapping(parser, f"{source}: parser", {"pluginRef"})
        log.warning("%s: DEPRECATION: top-level parser is deprecated, use requestHandler.parsers", source)
        rh = doc.get("requestHandler")
        if rh is None:
            rh = doc["requestHandler"] = {}
        if isinstance(rh, dict) and not rh.get("parsers"):
            rh["parsers"] = [parser]


def _feature_gates(v: Any, source: str) -> dict[str, bool]:
    gates = dict(FEATURE_GATES)
    for i, item in enumerate(_list(v, f"{source}: featureGates")):
        where = f"{source}: featureGates[{i}]"
        name, sep, value = _str(item, where).partition("=")
        if name not in FEATURE_GATES:
            raise ConfigError(f"{where}: feature gate {name!r} is unknown or unregistered; known: "
                              f"{', '.join(sorted(FEATURE_GATES))}")
        enabled = True
        if sep:
            word = value.strip().lower()
            if word not in ("1", "t", "true", "0", "f", "false"):  # Go's strconv.ParseBool, lower-cased
                raise ConfigError(f"{where}: {value!r} is not a valid value for the feature gate {name}")
            enabled = word in ("1", "t", "true")
        if name in GIE_ONLY_GATES:
            log.warning("%s: feature gate %r is %s; llm-d router v0.10 refuses it, GIE v1.5 accepts it: ignored",
                        where, name, GIE_ONLY_GATES[name])
        gates[name] = enabled
    return gates


# ---------------------------------------------------------------- plugins

def plugin_parameters(cls: type[Plugin]) -> list[str]:
    sig = inspect.signature(cls.__init__)
    return [n for n, p in sig.parameters.items()
            if n not in ("self", "name", "rng") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def instantiate(type_name: str, name: str, params: Any, where: str) -> Plugin:
    cls = REGISTRY.get(type_name)
    if cls is None:
        raise ConfigError(f"{where}: plugin type {type_name!r} is not registered; known types: "
                          f"{', '.join(sorted(REGISTRY))}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: parameters must be a mapping, got {type(params).__name__}")
    known = plugin_parameters(cls)
    if params and not known:
        # upstream's factory for this type never reads its parameters: they load, and change nothing
        log.warning("%s: plugin type %r takes no parameters; ignoring %s", where, type_name, sorted(params))
        params = {}
    unknown = [k for k in params if k not in known]
    if unknown:
        raise ConfigError(f"{where}: unknown parameter {unknown[0]!r} for plugin type {type_name!r}; "
                          f"known: {', '.join(known)}")
    try:
        plugin = cls(name=name, **params)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: failed to create plugin {name!r} (type: {type_name}): {e}") from None
    if type_name != cls.type_name:
        log.warning("%s: DEPRECATION: plugin type %r is deprecated; use %r", where, type_name, cls.type_name)
    elif cls.replaced_by:
        log.warning("%s: DEPRECATION: plugin type %r is deprecated; use %r", where, type_name, cls.replaced_by)
    return plugin


def _default_plugin(plugins: dict[str, Plugin], type_name: str, **params) -> Plugin:
    """Upstream's registerDefaultPlugin: the type with its defaults, named after the type."""
    plugin = REGISTRY[type_name](**params)
    plugins[plugin.name] = plugin
    return plugin


def _plugins(doc: dict, source: str, allow_experimental: bool) -> dict[str, Plugin]:
    plugins: dict[str, Plugin] = {}
    specs = []
    for i, spec in enumerate(_list(doc.get("plugins"), f"{source}: plugins")):
        where = f"{source}: plugins[{i}]"
        spec = _mapping(spec, where, _PLUGIN)
        type_name = _opt_str(spec.get("type"), f"{where}.type")
        name = _opt_str(spec.get("name"), f"{where}.name") or type_name
        if not type_name:
            raise ConfigError(f"{where}: plugin {name!r} is missing a type")
        if name in (s[0] for s in specs):
            raise ConfigError(f"{where}: duplicate plugin name {name!r}")
        if type_name not in REGISTRY and type_name in UNSUPPORTED:
            raise ConfigError(f"{where}: plugin type {type_name!r} (llm-d router v0.10) is not supported by this EPP: "
                              f"{UNSUPPORTED[type_name]} (docs/unsupported-plugins.md)")
        if type_name not in REGISTRY:
            raise ConfigError(f"{where}: plugin type {type_name!r} is not registered; known types: "
                              f"{', '.join(sorted(REGISTRY))}")
        specs.append((name, type_name, spec.get("parameters")))
    for name, type_name, params in specs:
        where = f"{source}: plugin {name!r}"
        plugin = instantiate(type_name, name, params, where)
        if plugin.stability == ALPHA and not allow_experimental:
            raise ConfigError(f"{source}: plugin {name!r} (type: {type_name!r}) has Alpha stability level, but "
                              f"command line flag --allow-experimental-plugins is not set")
        plugins[name] = plugin
    return plugins


def _create_missing_producers(plugins: dict[str, Plugin]) -> None:
    """As upstream's runner: consumers of data nobody produces get the default producer of it. A
    plugin consuming approximate prefix matches gets approx-prefix-cache-producer (unless an older-
    style prefix scorer carries its own), which consumes tokenized prompts from token-producer; one
    consuming in-flight load gets inflight-load-producer."""
    consumers = [p for p in plugins.values() if isinstance(p, PrefixMatchConsumer)]
    # a consumer naming no producer reads the default one, by its name (as upstream's data keys do)
    if any(c.wants_default_producer() for c in consumers) and DEFAULT_PRODUCER not in plugins and not any(
            (p := c.carried_producer()) is not None and p.type_name == DEFAULT_PRODUCER for c in consumers):
        _default_plugin(plugins, DEFAULT_PRODUCER)
    if any(isinstance(p, InFlightLoadConsumer) and p.wants_inflight_load() for p in plugins.values()):
        if DEFAULT_INFLIGHT not in plugins:
            _default_plugin(plugins, DEFAULT_INFLIGHT)
    if any(isinstance(p, TokenizedPromptConsumer) for p in plugins.values()):
        if not any(p.type_name == DEFAULT_TOKENS for p in plugins.values()):
            _default_plugin(plugins, DEFAULT_TOKENS)


# ---------------------------------------------------------------- profiles and handler

def _profiles(doc: dict, plugins: dict[str, Plugin], source: str, max_num_of_endpoints: int) -> list[Profile]:
    pickers = [p for p in plugins.values() if isinstance(p, Picker)]
    default_picker = pickers[0] if pickers else None
    profiles: list[Profile] = []
    specs = _list(doc.get("schedulingProfiles"), f"{source}: schedulingProfiles")
    if not specs:
        members = [{"pluginRef": n} for n, p in plugins.items() if isinstance(p, (Filter, Scorer, Picker))]
        specs = [{"name": "default", "plugins": members}]
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        where = f"{source}: schedulingProfiles[{i}]"
        spec = _mapping(spec, where, _PROFILE)
        pname = _opt_str(spec.get("name"), f"{where}.name")
        if not pname:
            raise ConfigError(f"{where} is missing a name")
        if pname in seen:
            raise ConfigError(f"{where} has duplicate name {pname!r}")
        seen.add(pname)
        where = f"{source}: schedulingProfiles[{pname}]"
        filters, scorers, picker = [], [], None
        for j, ref in enumerate(_list(spec.get("plugins"), f"{where}.plugins")):
            rwhere = f"{where}.plugins[{j}]"
            ref = _mapping(ref, rwhere, _REF)
            rname = _opt_str(ref.get("pluginRef"), f"{rwhere}.pluginRef")
            if not rname:
                raise ConfigError(f"{rwhere} is missing a 'pluginRef'")
            plugin = plugins.get(rname)
            if plugin is None:
                raise ConfigError(f"{where} references undefined plugin {rname!r}; defined: "
                                  f"{', '.join(plugins) or 'none'}")
            weight = ref.get("weight", 1)
            if weight is None:
                weight = 1
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ConfigError(f"{rwhere}: weight must be a number, got {weight!r}")
            placed = False
            if isinstance(plugin, Filter):
                filters.append(plugin)
                placed = True
            if isinstance(plugin, Scorer):
                scorers.append(WeightedScorer(plugin, float(weight)))
                placed = True
            if isinstance(plugin, Picker):
                if picker is not None:
                    raise ConfigError(f"{rwhere}: failed to set {rname!r} as picker, already have a registered "
                                      f"picker plugin {picker.name!r}")
                picker = plugin
                placed = True
            if not placed:
                # upstream slots filters, scorers and pickers and passes over anything else (a producer
                # listed in a profile does its work wherever it is configured)
                log.warning("%s: %r (%s) is not a filter, scorer or picker: it takes no part in the profile",
                            rwhere, rname, plugin.type_name)
        if picker is None:
            if default_picker is None:
                default_picker = _default_plugin(plugins, DEFAULT_PICKER, maxNumOfEndpoints=max_num_of_endpoints)
            picker = default_picker
        profiles.append(Profile(name=pname, picker=picker, filters=filters, scorers=scorers))
    return profiles


def _handler(plugins: dict[str, Plugin], profiles: list[Profile], source: str) -> ProfileHandler:
    handlers = [p for p in plugins.values() if isinstance(p, ProfileHandler)]
    if len(handlers) > 1:
        raise ConfigError(f"{source}: multiple profile handlers found ({', '.join(repr(h.name) for h in handlers)}); "
                          f"only one is allowed")
    if not handlers:
        if len(profiles) != 1:
            raise ConfigError(f"{source}: {len(profiles)} scheduling profiles but no profile handler configured")
        handlers = [_default_plugin(plugins, DEFAULT_HANDLER)]
    handler = handlers[0]
    if handler.type_name == DEFAULT_HANDLER and len(profiles) > 1:
        raise ConfigError(f"{source}: SingleProfileHandler cannot support multiple scheduling profiles "
                          f"({', '.join(p.name for p in profiles)})")
    try:
        handler.validate({p.name: p for p in profiles})
    except ValueError as e:
        raise ConfigError(f"{source}: profile handler {handler.name!r}: {e}") from None
    return handler


# ---------------------------------------------------------------- parsers, saturation, data layer

def _parsers(doc: dict, plugins: dict[str, Plugin], source: str) -> list[Parser]:
    rh = doc.get("requestHandler")
    refs = []
    if rh is not None:
        rh = _mapping(rh, f"{source}: requestHandler", {"parsers"})
        for i, ref in enumerate(_list(rh.get("parsers"), f"{source}: requestHandler.parsers")):
            ref = _mapping(ref, f"{source}: requestHandler.parsers[{i}]", {"pluginRef"})
            refs.append(_str(ref.get("pluginRef"), f"{source}: requestHandler.parsers[{i}].pluginRef"))
    if not refs:
        refs = list(DEFAULT_PARSERS)
    out: list[Parser] = []
    for ref in refs:
        plugin = plugins.get(ref)
        if plugin is None:
            # as upstream: a parser named but not declared is created by type = name
            if ref not in REGISTRY:
                raise ConfigError(f"{source}: parser references undefined plugin {ref!r}")
            plugin = _default_plugin(plugins, ref)
        if not isinstance(plugin, Parser):
            raise ConfigError(f"{source}: the plugin {ref!r} ({plugin.type_name}) is not a parser plugin")
        out.append(plugin)
    # upstream's registry: one parser per type, and nothing after a catch-all is ever asked
    seen, kept = set(), []
    for p in out:
        if p.type_name in seen:
            log.warning("%s: parser %r: type %s is already registered, skipping it", source, p.name, p.type_name)
            continue
        seen.add(p.type_name)
        kept.append(p)
        if not p.routes:
            skipped = out[out.index(p) + 1:]
            if skipped:
                log.warning("%s: parsers %s come after the catch-all parser %r and are never asked", source,
                            ", ".join(repr(s.name) for s in skipped), p.name)
            break
    return kept


def _saturation(doc: dict, plugins: dict[str, Plugin], source: str) -> SaturationDetector | None:
    """flowControl.saturationDetector.pluginRef (the older top-level field has been moved there)."""
    flow = doc.get("flowControl")
    ref = None
    if flow is not None:
        flow = _mapping(flow, f"{source}: flowControl", _FLOW)
        sd = flow.get("saturationDetector")
        if sd is not None:
            sd = _mapping(sd, f"{source}: flowControl.saturationDetector", {"pluginRef"})
            ref = sd.get("pluginRef")
            if not ref:
                raise ConfigError(f"{source}: saturation detector plugin reference is empty")
    if ref is None:
        return next((p for p in plugins.values() if p.type_name == DEFAULT_DETECTOR), None)
    plugin = plugins.get(ref)
    if plugin is None:
        if ref == DEFAULT_DETECTOR:  # upstream creates the default detector when it is named
            return _default_plugin(plugins, ref)
        raise ConfigError(f"{source}: saturation detector references undefined plugin {ref!r}")
    if not isinstance(plugin, SaturationDetector):
        raise ConfigError(f"{source}: plugin {ref!r} ({plugin.type_name}) is not a saturation detector")
    return plugin


def _data_layer(doc: dict, plugins: dict[str, Plugin], source: str) -> DataLayer:
    where = f"{source}: dataLayer"
    dl = doc.get("dataLayer")
    dl = _mapping(dl, where, _DATA_LAYER) if dl is not None else {}
    out = DataLayer()
    for i, src in enumerate(_list(dl.get("sources"), f"{where}.sources")):
        swhere = f"{where}.sources[{i}]"
        src = _mapping(src, swhere, {"pluginRef", "extractors"})
        ref = _str(src.get("pluginRef"), f"{swhere}.pluginRef")
        plugin = plugins.get(ref)
        if not isinstance(plugin, DataSource):
            raise ConfigError(f"{swhere}: the plugin {ref!r} is not a data source"
                              + (f" ({plugin.type_name})" if plugin else " (not defined)"))
        extractors = []
        for j, ext in enumerate(_list(src.get("extractors"), f"{swhere}.extractors")):
            ext = _mapping(ext, f"{swhere}.extractors[{j}]", {"pluginRef"})
            eref = _str(ext.get("pluginRef"), f"{swhere}.extractors[{j}].pluginRef")
            if eref not in plugins:
                raise ConfigError(f"{swhere}.extractors[{j}]: the plugin {eref!r} is not registered")
            extractors.append(plugins[eref])
        out.sources.append((plugin, extractors))
    disc = dl.get("discovery")
    if disc is not None:
        disc = _mapping(disc, f"{where}.discovery", {"pluginRef"})
        ref = _str(disc.get("pluginRef"), f"{where}.discovery.pluginRef")
        plugin = plugins.get(ref)
        if not isinstance(plugin, Discovery):
            raise ConfigError(f"{where}.discovery: the plugin {ref!r} is not an endpoint discovery plugin")
        out.discovery = plugin
    syncer = dl.get("crossReplicaSyncerPluginRef")
    if syncer:
        # no v0.10 type implements a cross-replica syncer (only a test mock does)
        raise ConfigError(f"{where}: the plugin {syncer!r} is not a cross-replica syncer")
    interval = dl.get("crossReplicaSyncInterval")
    if interval is not None:
        try:
            out.cross_replica_sync_interval = parse_duration(str(interval))
        except ValueError as e:
            raise ConfigError(f"{where}.crossReplicaSyncInterval: {e}") from None
    inject = dl.get("injectDefaults", True)
    if not isinstance(inject, bool):
        raise ConfigError(f"{where}.injectDefaults: must be true or false, got {inject!r}")
    if inject and not any(s.type_name == DEFAULT_METRICS_SOURCE for s, _ in out.sources):
        src = plugins.get(DEFAULT_METRICS_SOURCE) or _default_plugin(plugins, DEFAULT_METRICS_SOURCE)
        ext = plugins.get(DEFAULT_METRICS_EXTRACTOR) or _default_plugin(plugins, DEFAULT_METRICS_EXTRACTOR)
        if not isinstance(src, DataSource):
            raise ConfigError(f"{where}: the plugin {DEFAULT_METRICS_SOURCE!r} is not a data source")
        out.sources.append((src, [ext]))
    return out


def load(text: str, source: str = "config", max_num_of_endpoints: int = 1,
         allow_experimental: bool = False) -> SchedulingConfig:
    load_all()
    doc = parse_text(text, source)
    _convert_deprecated(doc, source)
    gates = _feature_gates(doc.get("featureGates"), source)
    plugins = _plugins(doc, source, allow_experimental)
    parsers = _parsers(doc, plugins, source)
    _create_missing_producers(plugins)
    # plugins that name other plugins (producers, deciders) resolve them now
    for name, plugin in list(plugins.items()):
        if isinstance(plugin, BindsPlugins):
            try:
                plugin.bind(plugins)
            except ValueError as e:
                raise ConfigError(f"{source}: plugin {name!r}: {e}") from None
    profiles = _profiles(doc, plugins, source, max_num_of_endpoints)
    handler = _handler(plugins, profiles, source)
    saturation = _saturation(doc, plugins, source)
    data_layer = _data_layer(doc, plugins, source)
    flow = doc.get("flowControl")
    return SchedulingConfig(plugins=plugins, profiles=profiles, handler=handler, saturation=saturation,
                            feature_gates=gates, parsers=parsers, data_layer=data_layer,
                            flow_control=flow if isinstance(flow, dict) else None, source=source)


def default_saturation_detector(staleness: float) -> SaturationDetector:
    """Upstream's utilization-detector with its default thresholds and this EPP's staleness threshold,
    for a config that names no detector."""
    load_all()
    return instantiate("utilization-detector", "utilization-detector", {"metricsStalenessThreshold": staleness},
                       "default saturation detector")


def default_parsers() -> list[Parser]:
    """Upstream's parsers when a config names none (openai, anthropic, vllmhttp), for request control
    built without a config."""
    load_all()
    return [REGISTRY[t]() for t in DEFAULT_PARSERS]


DEFAULT_CONFIG = f"""\
apiVersion: {API_VERSIONS[0]}
kind: {KIND}
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
"""


def create_default(type_name: str) -> Plugin:
    """A plugin of a registered type with its defaults, named by its type (what upstream auto-registers)."""
    load_all()
    return REGISTRY[type_name]()
