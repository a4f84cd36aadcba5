"""The EndpointPickerConfig's `flowControl:` section, decoded strictly with upstream's field names and
defaults (the scheduling config loader checks its shape and hands it over raw, with the plugins).

    flowControl:
      maxRequests: 0            # global cap on queued requests; absent or 0 = unlimited
      maxBytes: 0               # global cap on queued body bytes (a quantity: 1000000000, "1Gi")
      defaultRequestTTL: 60s    # queue-wait budget while the pool has endpoints; "0s" = never expire
      noEndpointRequestTTL: 60s # the budget while the pool is empty; unset = defaultRequestTTL's value
      priorityBands:            # listed bands get the system defaults for what they omit
      - {priority: 10, maxRequests: 5000, maxBytes: 1000000000,
         fairnessPolicyRef: global-strict-fairness-policy, orderingPolicyRef: fcfs-ordering-policy}
      defaultPriorityBand: {}          # template for band 0 (when unlisted) and objectives' priorities
      defaultNegativePriorityBand: {}  # template for priorities < 0; unset = defaultPriorityBand
      usageLimitPolicyPluginRef: static-usage-limit-policy
      saturationDetector: {pluginRef: utilization-detector}   # resolved by the scheduling loader
      enableEviction: false

References name plugin instances; fcfs-ordering-policy, global-strict-fairness-policy and
static-usage-limit-policy are created under their type names when the config does not declare them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..durations import parse_duration
from ..scheduling.config import ConfigError, create_default
from ..scheduling.framework import (DEFAULT_FAIRNESS_POLICY, DEFAULT_ORDERING_POLICY, DEFAULT_USAGE_LIMIT_POLICY,
                                    FairnessPolicy, OrderingPolicy, Plugin, UsageLimitPolicy)
from .quantity import parse_quantity

FEATURE_GATE = "flowControl"
DEFAULT_TTL = 60.0
DEFAULT_BAND_MAX_REQUESTS = 5000
DEFAULT_BAND_MAX_BYTES = 1_000_000_000
# upstream's fixed internals (not configurable there either)
FLOW_GC_TIMEOUT = 300.0
BAND_GC_TIMEOUT = 2 * FLOW_GC_TIMEOUT

_SECTION = {"maxBytes", "maxRequests", "defaultRequestTTL", "noEndpointRequestTTL", "defaultPriorityBand",
            "defaultNegativePriorityBand", "priorityBands", "usageLimitPolicyPluginRef", "saturationDetector",
            "enableEviction"}
_BAND = {"priority", "maxBytes", "maxRequests", "fairnessPolicyRef", "orderingPolicyRef"}
IGNORED_WARNING = ("WARNING: the flowControl config section is set but the flowControl feature gate is disabled; "
                   "its settings (other than saturationDetector) are ignored")


@dataclass
class BandConfig:
    priority: int
    max_requests: int
    max_bytes: int
    fairness: FairnessPolicy
    ordering: OrderingPolicy

    def describe(self) -> str:
        return (f"{self.priority}: {self.max_requests} requests, {self.max_bytes} bytes, {self.fairness.name}, "
                f"{self.ordering.name}")


@dataclass
class FlowControlConfig:
    max_requests: int = 0                # 0: no global cap
    max_bytes: int = 0
    default_ttl: float = DEFAULT_TTL     # 0: no expiry while the pool has endpoints
    no_endpoint_ttl: float = DEFAULT_TTL
    bands: dict[int, BandConfig] = field(default_factory=dict)   # always has band 0
    default_band: BandConfig | None = None            # template for provisioned bands
    default_negative_band: BandConfig | None = None   # template for provisioned negative bands
    usage_limit: UsageLimitPolicy | None = None
    enable_eviction: bool = False

    def template(self, priority: int) -> BandConfig:
        t = self.default_negative_band if priority < 0 and self.default_negative_band is not None else self.default_band
        return replace(t, priority=priority)

    def describe(self) -> str:
        bands = "; ".join(self.bands[p].describe() for p in sorted(self.bands, reverse=True))
        caps = (f"global cap {self.max_requests or 'unlimited'} requests / {self.max_bytes or 'unlimited'} bytes")
        return (f"bands [{bands}]; {caps}; TTL {self.default_ttl:g}s (no endpoints {self.no_endpoint_ttl:g}s); "
                f"usage limit {self.usage_limit.name}; eviction {'on' if self.enable_eviction else 'off'}")


def _mapping(v: Any, where: str, keys: set[str]) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: must be a mapping, got {type(v).__name__}")
    unknown = [k for k in v if k not in keys]
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; allowed: {', '.join(sorted(keys))}")
    return v


def _quantity(v: Any, where: str) -> int:
    if v is None:
        return 0
    try:
        n = parse_quantity(v)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    if n < 0:
        raise ConfigError(f"{where} must be non-negative, got {n}")
    return n


def _duration(v: Any, where: str) -> float:
    text = str(v).strip()
    sign = -1.0 if text.startswith("-") else 1.0   # Go's syntax allows a sign; a budget cannot be negative
    try:
        d = sign * parse_duration(text.lstrip("+-")) if not isinstance(v, bool) else None
    except ValueError:
        d = None
    if d is None:
        raise ConfigError(f"{where}: must be a duration like 60s or 500ms, got {v!r}")
    if d < 0:
        raise ConfigError(f"{where} cannot be negative, got {v!r}")
    return d


def _ref(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"{where}: must be a plugin name, got {v!r}")
    return v


def _band_fields(raw: Any, where: str, need_priority: bool) -> dict:
    b = _mapping(raw, where, _BAND)
    if need_priority:
        p = b.get("priority")
        if isinstance(p, bool) or not isinstance(p, int):
            raise ConfigError(f"{where}.priority: must be an integer, got {p!r}")
    elif "priority" in b and (isinstance(b["priority"], bool) or not isinstance(b["priority"], int)):
        raise ConfigError(f"{where}.priority: must be an integer, got {b['priority']!r}")
    for k in ("fairnessPolicyRef", "orderingPolicyRef"):
        if k in b:
            _ref(b[k], f"{where}.{k}")
    return b


def check_shape(raw: Any, source: str = "config") -> dict:
    """Field names and value types of the section, without resolving plugins (gate off, as upstream's
    strict decoding still rejects a malformed section)."""
    where = f"{source}: flowControl"
    fc = _mapping(raw, where, _SECTION)
    for k in ("maxBytes", "maxRequests"):
        if k in fc:
            _quantity(fc[k], f"{where}.{k}")
    for k in ("defaultRequestTTL", "noEndpointRequestTTL"):
        if k in fc:
            _duration(fc[k], f"{where}.{k}")
    for k in ("defaultPriorityBand", "defaultNegativePriorityBand"):
        if fc.get(k) is not None:
            _band_fields(fc[k], f"{where}.{k}", False)
    bands = fc.get("priorityBands")
    if bands is not None and not isinstance(bands, list):
        raise ConfigError(f"{where}.priorityBands: must be a list, got {type(bands).__name__}")
    for i, b in enumerate(bands or []):
        _band_fields(b, f"{where}.priorityBands[{i}]", True)
    if "usageLimitPolicyPluginRef" in fc:
        _ref(fc["usageLimitPolicyPluginRef"], f"{where}.usageLimitPolicyPluginRef")
    if "enableEviction" in fc and not isinstance(fc["enableEviction"], bool):
        raise ConfigError(f"{where}.enableEviction: must be true or false, got {fc['enableEviction']!r}")
    return fc


def settings_ignored(raw: Any) -> bool:
    """Whether the section sets anything the legacy path ignores (as upstream decides when to warn:
    saturationDetector is used either way, and enableEviction alone passes silently)."""
    if not isinstance(raw, dict):
        return False
    return (any(raw.get(k) is not None for k in ("maxBytes", "maxRequests", "defaultRequestTTL", "noEndpointRequestTTL",
                                                  "defaultPriorityBand", "defaultNegativePriorityBand"))
            or bool(raw.get("priorityBands")) or bool(raw.get("usageLimitPolicyPluginRef")))


def _resolve(plugins: dict[str, Plugin], ref: str, kind: type, where: str):
    p = plugins.get(ref)
    if p is None:
        raise ConfigError(f"{where}: plugin {ref!r} not found; declared: {', '.join(plugins) or 'none'}")
    if not isinstance(p, kind):
        raise ConfigError(f"{where}: plugin {ref!r} ({p.type_name}) is not a {kind.__name__}")
    return p


def decode(raw: Any, plugins: dict[str, Plugin], source: str = "config") -> FlowControlConfig:
    """The section (None: every default) with its policy references resolved; raises ConfigError."""
    fc = check_shape(raw, source)
    where = f"{source}: flowControl"
    known = dict(plugins)
    for name in (DEFAULT_ORDERING_POLICY, DEFAULT_FAIRNESS_POLICY, DEFAULT_USAGE_LIMIT_POLICY):
        if name not in known:
            known[name] = create_default(name)
    default_ordering = _resolve(known, DEFAULT_ORDERING_POLICY, OrderingPolicy, where)
    default_fairness = _resolve(known, DEFAULT_FAIRNESS_POLICY, FairnessPolicy, where)

    def band(raw_band: Any, label: str, priority: int) -> BandConfig:
        b = raw_band or {}
        return BandConfig(
            priority=priority,
            max_requests=_quantity(b.get("maxRequests"), f"{where}.{label}.maxRequests") or DEFAULT_BAND_MAX_REQUESTS,
            max_bytes=_quantity(b.get("maxBytes"), f"{where}.{label}.maxBytes") or DEFAULT_BAND_MAX_BYTES,
            fairness=(_resolve(known, b["fairnessPolicyRef"], FairnessPolicy, f"{where}.{label}.fairnessPolicyRef")
                      if b.get("fairnessPolicyRef") else default_fairness),
            ordering=(_resolve(known, b["orderingPolicyRef"], OrderingPolicy, f"{where}.{label}.orderingPolicyRef")
                      if b.get("orderingPolicyRef") else default_ordering))

    cfg = FlowControlConfig(
        max_requests=_quantity(fc.get("maxRequests"), f"{where}.maxRequests"),
        max_bytes=_quantity(fc.get("maxBytes"), f"{where}.maxBytes"),
        enable_eviction=bool(fc.get("enableEviction", False)))
    if fc.get("defaultRequestTTL") is not None:
        cfg.default_ttl = _duration(fc["defaultRequestTTL"], f"{where}.defaultRequestTTL")
    if fc.get("noEndpointRequestTTL") is not None:
        cfg.no_endpoint_ttl = _duration(fc["noEndpointRequestTTL"], f"{where}.noEndpointRequestTTL")
    elif fc.get("defaultRequestTTL") is not None:
        cfg.no_endpoint_ttl = cfg.default_ttl   # unset follows the one budget the config gave
    cfg.default_band = band(fc.get("defaultPriorityBand"), "defaultPriorityBand", 0)
    if fc.get("defaultNegativePriorityBand") is not None:
        cfg.default_negative_band = band(fc["defaultNegativePriorityBand"], "defaultNegativePriorityBand", -1)
    for i, b in enumerate(fc.get("priorityBands") or []):
        p = b["priority"]
        if p in cfg.bands:
            raise ConfigError(f"{where}.priorityBands[{i}]: duplicate priority level {p}")
        cfg.bands[p] = band(b, f"priorityBands[{i}]", p)
    if 0 not in cfg.bands:
        cfg.bands[0] = replace(cfg.default_band, priority=0)
    ref = fc.get("usageLimitPolicyPluginRef") or DEFAULT_USAGE_LIMIT_POLICY
    cfg.usage_limit = _resolve(known, ref, UsageLimitPolicy, f"{where}.usageLimitPolicyPluginRef")
    return cfg
