"""Candidates: an EndpointPickerConfig (a file, or a benchmark router's) with a pool's role counts, and
the sweep that varies them: P:D role counts, the P/D decider's nonCachedTokens, scorer weights.

Each candidate keeps its config as text, changed only where the sweep says (and, as the benchmark
harness does for precise configs, pointed at the simulator's tokenizer, model name and block size), so
the config a candidate ran is exactly the one written out for it.
"""
from __future__ import annotations

import itertools
from collections import Counter
import os
from dataclasses import dataclass, field

import yaml

from epp.scheduling.plugins._roles import FLEX_ROLES, PREFILL_ROLES
from testbed.scenario import ROUTER_CONFIGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DECIDER = "prefix-based-pd-decider"


class CandidateError(ValueError):
    pass


@dataclass
class Candidate:
    name: str
    config_name: str                 # the file or router it came from
    config_text: str
    roles: list[str]                 # one per pod
    settings: dict = field(default_factory=dict)   # what the sweep set: pd, nonCachedTokens, weights
    workload: object = None          # the plan.Workload it runs (a P/D scenario's variants each have theirs)

    @property
    def role_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.roles:
            out[r] = out.get(r, 0) + 1
        return out


def pd_label(counts: dict[str, int]) -> str:
    """'P:D' of a pool's role counts (prefill-only : the rest), then '+N flex' for the pods that take
    both roles (prefill-decode or both), which the P:D split alone would count as decode pods."""
    flex = sum(v for k, v in counts.items() if k in FLEX_ROLES)
    pd = f"{counts.get('prefill', 0)}:{sum(v for k, v in counts.items() if k != 'prefill' and k not in FLEX_ROLES)}"
    return f"{pd} +{flex} flex" if flex else pd


def config_path(ref: str) -> str:
    """A config file path, or a benchmark router name (epp-approx, epp-pd, ...) or epp:PATH."""
    if ref.startswith("epp:"):
        ref = ref[4:]
    if ref in ROUTER_CONFIGS:
        return os.path.join(ROOT, ROUTER_CONFIGS[ref])
    if os.path.exists(ref):
        return ref
    raise CandidateError(f"config {ref!r}: no such file and not a benchmark router ({', '.join(ROUTER_CONFIGS)})")


def config_label(ref: str) -> str:
    return ref if ref in ROUTER_CONFIGS else os.path.splitext(os.path.basename(ref))[0]


def adapt(text: str, model: str, block_size: int) -> str:
    """What the benchmark harness changes in a precise config (hack/bench/routers.epp_config): the
    token-producer reads the simulator's tokenizer and names the pool's model; the precise producer
    cuts blocks of the pods' block size. Other configs are returned unchanged."""
    if "precise-prefix-cache" not in text and "token-producer" not in text:
        return text
    from vllm_sim.tokenizer import DEFAULT_DIR
    doc = yaml.safe_load(text)
    for plugin in doc.get("plugins", []):
        params = plugin.get("parameters") or {}
        if plugin.get("type") == "token-producer" and "local" in params:
            params["local"]["path"] = DEFAULT_DIR
            params["modelName"] = model
        if plugin.get("type") in ("precise-prefix-cache-producer", "precise-prefix-cache-scorer"):
            params.setdefault("tokenProcessorConfig", {})["blockSize"] = block_size
        if params:
            plugin["parameters"] = params
    return yaml.safe_dump(doc, sort_keys=False)


def set_non_cached(text: str, value: int) -> str:
    doc = yaml.safe_load(text)
    found = False
    for plugin in doc.get("plugins", []):
        if plugin.get("type") == DECIDER:
            plugin.setdefault("parameters", {})
            plugin["parameters"] = dict(plugin["parameters"] or {}, nonCachedTokens=value)
            found = True
    if not found:
        raise CandidateError(f"nonCachedTokens: the config has no {DECIDER}")
    return yaml.safe_dump(doc, sort_keys=False)


def set_weight(text: str, plugin: str, value: float) -> str:
    doc = yaml.safe_load(text)
    found = False
    for prof in doc.get("schedulingProfiles") or []:
        for ref in prof.get("plugins") or []:
            if ref.get("pluginRef") == plugin:
                ref["weight"] = value
                found = True
    if not found:
        raise CandidateError(f"weight {plugin}: no scheduling profile references a plugin named {plugin!r}")
    return yaml.safe_dump(doc, sort_keys=False)


def parse_pd(value: str) -> list[str]:
    """'P:D' -> roles: P prefill pods then D decode pods ('0:4' is four aggregated pods)."""
    try:
        p, d = (int(x) for x in value.split(":"))
    except ValueError:
        raise CandidateError(f"--pd {value!r}: want P:D, e.g. 1:3") from None
    if p < 0 or d < 1:
        raise CandidateError(f"--pd {value!r}: at least one decode pod, no negative counts")
    return ["prefill"] * p + ["decode"] * d


def parse_weights(specs: list[str]) -> list[tuple[str, list[float]]]:
    out = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name:
            raise CandidateError(f"--weight {spec!r}: want PLUGIN=w1,w2,...")
        try:
            out.append((name, [float(v) for v in values.split(",") if v]))
        except ValueError:
            raise CandidateError(f"--weight {spec!r}: weights must be numbers") from None
    return out


def expand(bases: list[tuple], pds: list[str], non_cached: list[int],
           weights: list[tuple[str, list[float]]], model: str, block_size: int) -> list[Candidate]:
    """Every combination: (label, config text, roles, workload, origin) bases x P:D role counts x nonCachedTokens x weights."""
    out = []
    weight_axes = [[(name, w) for w in ws] for name, ws in weights]
    for label, text, roles, workload, origin in bases:
        text = adapt(text, model, block_size)
        for pd in pds or [None]:
            r = parse_pd(pd) if pd else roles
            # without prefill pods the decider's threshold changes nothing: one candidate, not one per value
            no_prefill = not PREFILL_ROLES.intersection(r)
            for nct in (non_cached[:1] if no_prefill else non_cached) or [None]:
                for combo in itertools.product(*weight_axes) if weight_axes else [()]:
                    t = text
                    settings: dict = dict(origin)
                    parts = [label]
                    if pd:
                        settings["pd"] = pd
                    parts.append(f"P:D {pd_label(Counter(r))}")
                    if nct is not None:
                        t = set_non_cached(t, nct)
                        if not no_prefill:
                            settings["nonCachedTokens"] = nct
                            parts.append(f"nonCached {nct}")
                    for name, w in combo:
                        t = set_weight(t, name, w)
                        settings.setdefault("weights", {})[name] = w
                        parts.append(f"{name} x{w:g}")
                    out.append(Candidate(", ".join(parts), label, t, list(r), settings, workload))
    names = [c.name for c in out]
    for c in out:      # two bases with one label (e.g. variants): keep names unique
        if names.count(c.name) > 1:
            c.name += f" [{'/'.join(sorted(set(c.roles)))} #{out.index(c)}]"
    return out
