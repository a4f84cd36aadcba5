"""Prefill/decode disaggregation: what the profile handler, its deciders and the metric share.

A decider answers, for one request and the decode pod already picked, whether a separate prefill is
worth it, and why (a short reason that labels the metric and goes into the decision explanation).
"""
from __future__ import annotations

from prometheus_client import Counter

from ...headers import PREFILLER as PREFILL_HEADER
from ..framework import HasSubPlugins, Plugin

# decision_type values, as upstream's
DECODE_ONLY = "decode-only"
PREFILL_DECODE = "prefill-decode"

# reasons (ours): why the decision went the way it did
UNCACHED = "uncached"                # enough of the prompt is not cached on the decode pod
ALWAYS = "always"                    # always-disagg-pd-decider
PREFILL_FIRST = "prefill_first"      # stageOrder prefill-first: prefill runs whenever a prefill pod exists
BELOW_THRESHOLD = "below_threshold"  # the prompt is shorter than nonCachedTokens (or promptTokens)
ALREADY_CACHED = "already_cached"    # the decode pod holds all but fewer than nonCachedTokens of it
DISABLED = "disabled"                # nonCachedTokens: 0
NO_DECIDER = "no_decider"            # the handler has no deciders.prefill
NO_PREFILL_POD = "no_prefill_pod"    # the prefill profile's filters left no endpoint
SAME_POD = "same_pod"                # the only prefill pick is the decode pod itself

PD_DECISIONS = Counter(
    "llm_d_inference_scheduler_pd_decision_total",
    "P/D disaggregation decisions by decision type (decode-only, prefill-decode) and reason.",
    ["model_name", "decision_type", "reason"])
DISAGG_DECISIONS = Counter(
    "llm_d_epp_disagg_decision_total",
    "Disaggregation routing decisions (upstream's current name) by profile handler and decision type.",
    ["plugin_name", "plugin_type", "model_name", "decision_type"])


def prefill_header(result, profile: str) -> list[tuple[str, str]] | None:
    """The header naming the prefill profile's pick, when it ran, picked, and is not the primary."""
    prefill = result.profiles.get(profile)
    if prefill is None or not prefill.targets or result.primary == profile:
        return None
    return [(PREFILL_HEADER, prefill.targets[0].address)]


def record(handler: Plugin, model: str, decision: str, reason: str) -> None:
    model = model or "unknown"
    PD_DECISIONS.labels(model, decision, reason).inc()
    DISAGG_DECISIONS.labels(handler.name, handler.type_name, model, decision).inc()


class PDDecider(Plugin, HasSubPlugins):
    """Decides whether the prefill stage runs for a request, given the picked decode endpoint."""

    def decide(self, state, request, endpoint) -> tuple[bool, str, str]:
        """(disaggregate, reason, detail for the explanation)."""
        raise NotImplementedError

    def attach(self, decode_profile, producer=None) -> None:
        """Told the decode profile (and a prefix-match producer named by the handler, if any) once the
        configuration is complete."""

    def attach_prefill(self, prefill_profile) -> None:
        """Told the prefill profile once the configuration is complete (a decider may weigh only the
        endpoints its filters would keep)."""

    def sub_plugins(self) -> list:
        return []
