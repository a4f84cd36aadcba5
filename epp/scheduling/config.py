"""EndpointPickerConfig: the upstream (GIE / llm-d router) scheduling config file, decoded strictly.

    apiVersion: llm-d.ai/v1alpha1          # or inference.networking.x-k8s.io/v1alpha1 (older)
    kind: EndpointPickerConfig
    plugins: [{name, type, parameters}]
    schedulingProfiles: [{name, plugins: [{pluginRef, weight}]}]

Defaults as upstream: name = type; weight 1; no profiles -> one "default" profile with every filter,
scorer and picker (in file order); a profile without a picker gets the first configured picker, else
max-score-picker; one profile and no handler -> single-profile-handler. Unknown keys, types and
plugin references are errors that say where they are. The sections that configure machinery this
EPP runs differently (dataLayer, requestHandler) are checked for shape and otherwise ignored;
flowControl is checked for shape here and handed over raw (with the plugins) to epp/flowcontrol,
which decodes it; the saturation detector is resolved here (request control uses it either way).
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import yaml

from .framework import (DEFAULT_HANDLER, DEFAULT_INFLIGHT_PRODUCER, DEFAULT_PICKER, DEFAULT_PRODUCER, REGISTRY,
                        BindsPlugins, Filter, InFlightLoadConsumer, Picker, Plugin, PrefixMatchConsumer, ProfileHandler,
                        SaturationDetector, Scorer)
from .plugins import load_all
from .profile import Profile, WeightedScorer

log = logging.getLogger(__name__)

API_VERSIONS = ("llm-d.ai/v1alpha1", "inference.networking.x-k8s.io/v1alpha1")
KIND = "EndpointPickerConfig"
FEATURE_GATES = {"flowControl": False, "haPopulateNonLeaderDatastore": True, "dataLayer": True,
                 "prepareDataPlugins": True}
_TOP = {"apiVersion", "kind", "featureGates", "plugins", "schedulingProfiles", "dataLayer", "data",
        "flowControl", "requestHandler", "saturationDetector", "parser"}
_PLUGIN = {"name", "type", "parameters"}
_PROFILE = {"name", "plugins"}
_REF = {"pluginRef", "weight"}
_DATA_LAYER = {"injectDefaults", "sources", "discovery", "peerDiscovery", "crossReplicaSyncerPluginRef",
               "crossReplicaSyncInterval"}
_FLOW = {"maxBytes", "maxRequests", "defaultRequestTTL", "noEndpointRequestTTL", "defaultPriorityBand",
         "defaultNegativePriorityBand", "priorityBands", "usageLimitPolicyPluginRef", "saturationDetector",
         "enableEviction"}
_OLD_SATURATION = {"queueDepthThreshold", "kvCacheUtilThreshold", "metricsStalenessThreshold", "headroom"}
# machinery the EPP has built in: referencing it by type is accepted (it names what we already do)
BUILT_IN_TYPES = {"openai-parser", "anthropic-parser", "vllmhttp-parser", "passthrough-parser",
                  "metrics-data-source", "core-metrics-extractor"}


class ConfigError(ValueError):
    pass


@dataclass
class SchedulingConfig:
    """What the config file decides: the plugins, the profiles, the handler, the saturation detector."""

    plugins: dict[str, Plugin]
    profiles: list[Profile]
    handler: ProfileHandler
    saturation: SaturationDetector | None = None
    feature_gates: dict[str, bool] = field(default_factory=dict)
    flow_control: dict | None = None   # the raw flowControl section, for epp/flowcontrol to decode
    source: str = "config"

    def describe(self) -> str:
        parts = []
        for p in self.profiles:
            items = [f"filter {f.name}" for f in p.filters] + [f"{ws.scorer.name} x{ws.weight:g}" for ws in p.scorers]
            parts.append(f"profile {p.name!r}: {', '.join(items) or 'no filters or scorers'}; picker {p.picker.name}")
        return f"{self.handler.name}; " + "; ".join(parts)


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


def parse_text(text: str, source: str = "config") -> dict:
    try:
        doc = yaml.safe_load(text)
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


def _feature_gates(v: Any, source: str) -> dict[str, bool]:
    gates = dict(FEATURE_GATES)
    for i, item in enumerate(_list(v, f"{source}: featureGates")):
        where = f"{source}: featureGates[{i}]"
        name, sep, value = _str(item, where).partition("=")
        if name not in FEATURE_GATES:
            raise ConfigError(f"{where}: feature gate {name!r} is unknown; known: {', '.join(sorted(FEATURE_GATES))}")
        if sep and value.lower() not in ("true", "false"):
            raise ConfigError(f"{where}: feature gate value must be true or false, got {value!r}")
        gates[name] = (value.lower() == "true") if sep else True
    return gates


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
        # upstream ignores parameters on plugins that take none; a hint beats a hard failure here
        log.warning("%s: plugin type %r takes no parameters; ignoring %s", where, type_name, sorted(params))
        params = {}
    unknown = [k for k in params if k not in known]
    if unknown:
        raise ConfigError(f"{where}: unknown parameter {unknown[0]!r} for plugin type {type_name!r}; "
                          f"known: {', '.join(known)}")
    try:
        plugin = cls(name=name, **params)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None
    if type_name != cls.type_name:
        log.warning("%s: plugin type %r is a deprecated alias of %r", where, type_name, cls.type_name)
    return plugin


def load(text: str, source: str = "config", max_num_of_endpoints: int = 1) -> SchedulingConfig:
    load_all()
    doc = parse_text(text, source)
    if doc["apiVersion"] != API_VERSIONS[0]:
        log.info("%s: apiVersion %s is the older group; %s is current", source, doc["apiVersion"], API_VERSIONS[0])
    gates = _feature_gates(doc.get("featureGates"), source)

    plugins: dict[str, Plugin] = {}
    for i, spec in enumerate(_list(doc.get("plugins"), f"{source}: plugins")):
        where = f"{source}: plugins[{i}]"
        spec = _mapping(spec, where, _PLUGIN)
        if "type" not in spec:
            raise ConfigError(f"{where}: plugin is missing a type")
        type_name = _str(spec["type"], f"{where}.type")
        name = _str(spec.get("name") or type_name, f"{where}.name")
        where = f"{source}: plugin {name!r}"
        if name in plugins:
            raise ConfigError(f"{where}: duplicate plugin name {name!r}")
        if type_name in BUILT_IN_TYPES:
            log.info("%s: %s is built in; nothing to configure", where, type_name)
            continue
        plugins[name] = instantiate(type_name, name, spec.get("parameters"), where)

    _create_missing_producers(plugins)
    # plugins that name other plugins (producers, deciders) resolve them now
    for name, plugin in list(plugins.items()):
        if isinstance(plugin, BindsPlugins):
            try:
                plugin.bind(plugins)
            except ValueError as e:
                raise ConfigError(f"{source}: plugin {name!r}: {e}") from None

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
        pname = _str(spec.get("name"), f"{where}.name")
        where = f"{source}: profile {pname!r}"
        if pname in seen:
            raise ConfigError(f"{where}: duplicate profile name {pname!r}")
        seen.add(pname)
        filters, scorers, picker = [], [], None
        for j, ref in enumerate(_list(spec.get("plugins"), f"{where}.plugins")):
            rwhere = f"{where}.plugins[{j}]"
            ref = _mapping(ref, rwhere, _REF)
            rname = _str(ref.get("pluginRef"), f"{rwhere}.pluginRef")
            plugin = plugins.get(rname)
            if plugin is None:
                raise ConfigError(f"{rwhere}: pluginRef {rname!r} references an undefined plugin; defined: "
                                  f"{', '.join(plugins) or 'none'}")
            weight = ref.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ConfigError(f"{rwhere}: weight must be a number, got {weight!r}")
            if isinstance(plugin, ProfileHandler):
                raise ConfigError(f"{rwhere}: {rname!r} is a profile handler; it is not part of a profile")
            placed = False
            if isinstance(plugin, Filter):
                filters.append(plugin)
                placed = True
            if isinstance(plugin, Scorer):
                scorers.append(WeightedScorer(plugin, float(weight)))
                placed = True
            if isinstance(plugin, Picker):
                if picker is not None:
                    raise ConfigError(f"{rwhere}: profile already has picker {picker.name!r}; one picker per profile")
                picker = plugin
                placed = True
            if not placed:
                raise ConfigError(f"{rwhere}: {rname!r} ({plugin.type_name}) is not a filter, scorer or picker")
        if picker is None:
            if default_picker is None:
                default_picker = REGISTRY[DEFAULT_PICKER](maxNumOfEndpoints=max_num_of_endpoints)
                plugins.setdefault(default_picker.name, default_picker)
            picker = default_picker
        profiles.append(Profile(name=pname, picker=picker, filters=filters, scorers=scorers))

    handlers = [p for p in plugins.values() if isinstance(p, ProfileHandler)]
    if len(handlers) > 1:
        raise ConfigError(f"{source}: multiple profile handlers found ({', '.join(h.name for h in handlers)}); "
                          f"configure one")
    if not handlers:
        if len(profiles) != 1:
            raise ConfigError(f"{source}: {len(profiles)} scheduling profiles but no profile handler configured")
        handlers = [REGISTRY[DEFAULT_HANDLER]()]
        plugins.setdefault(handlers[0].name, handlers[0])
    try:
        handlers[0].validate({p.name: p for p in profiles})
    except ValueError as e:
        raise ConfigError(f"{source}: profile handler {handlers[0].name!r}: {e}") from None

    saturation = _saturation(doc, plugins, source)
    return SchedulingConfig(plugins=plugins, profiles=profiles, handler=handlers[0], saturation=saturation,
                            feature_gates=gates, flow_control=doc.get("flowControl"), source=source)


def _create_missing_producers(plugins: dict[str, Plugin]) -> None:
    """As upstream's runner: a plugin that consumes approximate prefix matches without naming a
    producer gets the default one (unless an older-style prefix scorer already carries its own);
    one that reads in-flight load without naming a producer gets the default in-flight producer."""
    if DEFAULT_INFLIGHT_PRODUCER not in plugins and any(
            isinstance(p, InFlightLoadConsumer) and p.wants_default_inflight_producer() for p in plugins.values()):
        plugins[DEFAULT_INFLIGHT_PRODUCER] = REGISTRY[DEFAULT_INFLIGHT_PRODUCER]()
    consumers = [p for p in plugins.values() if isinstance(p, PrefixMatchConsumer)]
    if not any(c.wants_default_producer() for c in consumers):
        return
    if any(p.type_name == DEFAULT_PRODUCER for p in plugins.values()):
        return
    if any((p := c.carried_producer()) is not None and p.type_name == DEFAULT_PRODUCER for c in consumers):
        return
    producer = REGISTRY[DEFAULT_PRODUCER]()
    plugins[producer.name] = producer


def _saturation(doc: dict, plugins: dict[str, Plugin], source: str) -> SaturationDetector | None:
    """flowControl.saturationDetector.pluginRef (current) or the older top-level saturationDetector
    with its thresholds inline; the current field wins when both are set."""
    dl = doc.get("dataLayer")
    if dl is not None:
        _mapping(dl, f"{source}: dataLayer", _DATA_LAYER)
    flow = doc.get("flowControl")
    ref = None
    if flow is not None:
        flow = _mapping(flow, f"{source}: flowControl", _FLOW)
        sd = flow.get("saturationDetector")
        if sd is not None:
            ref = _str(_mapping(sd, f"{source}: flowControl.saturationDetector", {"pluginRef"}).get("pluginRef"),
                       f"{source}: flowControl.saturationDetector.pluginRef")
    old = doc.get("saturationDetector")
    if ref is None and old is not None:
        old = _mapping(old, f"{source}: saturationDetector", _OLD_SATURATION | {"pluginRef"})
        if "pluginRef" in old:
            ref = _str(old["pluginRef"], f"{source}: saturationDetector.pluginRef")
        else:
            return instantiate("utilization-detector", "utilization-detector", old, f"{source}: saturationDetector")
    if ref is None:
        return next((p for p in plugins.values() if p.type_name == "utilization-detector"), None)
    plugin = plugins.get(ref)
    if plugin is None:
        raise ConfigError(f"{source}: saturation detector pluginRef {ref!r} references an undefined plugin")
    if not isinstance(plugin, SaturationDetector):
        raise ConfigError(f"{source}: saturation detector {ref!r} ({plugin.type_name}) is not a saturation detector")
    return plugin


def create_default(type_name: str) -> Plugin:
    """A plugin of a registered type with its defaults, named by its type (what upstream auto-registers)."""
    load_all()
    return REGISTRY[type_name]()


def default_saturation_detector(staleness: float) -> SaturationDetector:
    """Upstream's utilization-detector with its default thresholds and this EPP's staleness threshold,
    for a config that names no detector."""
    load_all()
    return instantiate("utilization-detector", "utilization-detector", {"metricsStalenessThreshold": staleness},
                       "default saturation detector")


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
