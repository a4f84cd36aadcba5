"""disagg-profile-handler: prefill/decode disaggregation over two scheduling profiles.

decode-first (the default stageOrder): the decode profile runs and picks the pod that answers
(Envoy's destination); the prefill decider (deciders.prefill) then looks at that pick and says
whether a separate prefill is worth it; if so the prefill profile picks a prefill pod, and the
pre-request hook sets `x-prefiller-host-port: <ip:port>` for the routing sidecar in the decode pod.
No decider, a decider that says no, or a prefill profile that leaves no endpoint (or only the decode
pod itself): decode only. The request never fails for want of a prefill pod.
prefill-first: the prefill profile runs first whenever it is configured, then the decode profile.

Parameters as upstream: profiles {decode, prefill, encode}, deciders {prefill}, stageOrder; or the
older flat form (decodeProfile, prefillProfile, prefillDeciderPluginName, deciderPluginName, ...),
not both. Encode disaggregation (deciders.encode) is not implemented here.

Each decision is counted in llm_d_inference_scheduler_pd_decision_total{model_name, decision_type,
reason} (and upstream's llm_d_epp_disagg_decision_total) and explained in result.reasons.
"""
from __future__ import annotations

import logging

from ..framework import (BindsPlugins, HasSubPlugins, PrefixMatchProducer, PreRequest, ProfileHandler, need_str,
                         params_error, register)
from ..types import ProfileResult, SchedulingResult
from ._disagg import (DECODE_ONLY, NO_DECIDER, NO_PREFILL_POD, PREFILL_DECODE, PREFILL_FIRST,
                      SAME_POD, PDDecider, prefill_header, record)

log = logging.getLogger(__name__)

DECODE_FIRST, PREFILL_FIRST_ORDER = "decode-first", "prefill-first"
_FLAT = ("decodeProfile", "prefillProfile", "encodeProfile", "prefillDeciderPluginName",
         "encodeDeciderPluginName", "deciderPluginName")


def stage_order(plugin: str, v) -> str:
    s = need_str(plugin, "stageOrder", v).lower().replace("-", "").replace("_", "")
    if s in ("", "decodefirst", "decode"):
        return DECODE_FIRST
    if s in ("prefillfirst", "prefill"):
        return PREFILL_FIRST_ORDER
    raise params_error(plugin, f"invalid stageOrder {v!r}, must be {DECODE_FIRST!r} or {PREFILL_FIRST_ORDER!r}")


def _names(plugin: str, key: str, v, allowed: tuple[str, ...]) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise params_error(plugin, f"parameter {key} must be a mapping of {', '.join(allowed)}")
    unknown = [k for k in v if k not in allowed]
    if unknown:
        raise params_error(plugin, f"unknown field {key}.{unknown[0]}; known: {', '.join(allowed)}")
    return {k: need_str(plugin, f"{key}.{k}", s) for k, s in v.items()}


@register
class DisaggProfileHandler(ProfileHandler, PreRequest, BindsPlugins, HasSubPlugins):
    type_name = "disagg-profile-handler"

    def __init__(self, name: str | None = None, stageOrder: str = "", profiles: dict | None = None,
                 deciders: dict | None = None, decodeProfile: str | None = None, prefillProfile: str | None = None,
                 encodeProfile: str | None = None, prefillDeciderPluginName: str | None = None,
                 encodeDeciderPluginName: str | None = None, deciderPluginName: str | None = None) -> None:
        super().__init__(name)
        t = self.type_name
        flat = dict(zip(_FLAT, (decodeProfile, prefillProfile, encodeProfile, prefillDeciderPluginName,
                                encodeDeciderPluginName, deciderPluginName)))
        flat = {k: need_str(t, k, v) for k, v in flat.items() if v is not None}
        if flat and (profiles is not None or deciders is not None):
            raise params_error(t, f"use one format exclusively: either nested profiles/deciders or the deprecated "
                                  f"flat fields ({', '.join(flat)})")
        prof = _names(t, "profiles", profiles, ("decode", "prefill", "encode"))
        dec = _names(t, "deciders", deciders, ("prefill", "encode"))
        if flat:
            log.warning("%s: flat parameters %s are deprecated; use profiles {decode, prefill} and deciders "
                        "{prefill}", self.name, ", ".join(flat))
            prof = {"decode": flat.get("decodeProfile", ""), "prefill": flat.get("prefillProfile", "")}
            dec = {"prefill": flat.get("prefillDeciderPluginName") or flat.get("deciderPluginName", ""),
                   "encode": flat.get("encodeDeciderPluginName", "")}
        self.order = stage_order(t, stageOrder)
        self.decode = prof.get("decode") or "decode"
        self.prefill = prof.get("prefill") or "prefill"
        self.decider_name = dec.get("prefill", "")
        if dec.get("encode"):
            raise params_error(t, f"deciders.encode ({dec['encode']!r}): encode disaggregation is not supported "
                                  f"by this epp")
        if self.order == PREFILL_FIRST_ORDER and self.decider_name:
            raise params_error(t, f"a prefill decider is not supported in {PREFILL_FIRST_ORDER} stage order")
        self.decider: PDDecider | None = None
        self.producer_name = ""      # pd-profile-handler's prefixMatchInfoProducerName
        self._producer = None
        self._key = f"disagg/{self.name}"

    # ------------------------------------------------------------------ config

    def bind(self, plugins: dict) -> None:
        if self.decider_name:
            p = plugins.get(self.decider_name)
            if p is None:
                raise ValueError(f"deciders.prefill plugin not found: {self.decider_name!r}")
            if not isinstance(p, PDDecider):
                raise ValueError(f"deciders.prefill: plugin {self.decider_name!r} ({p.type_name}) is not a P/D decider")
            self.decider = p
        if self.producer_name:
            p = plugins.get(self.producer_name)
            if not isinstance(p, PrefixMatchProducer):
                raise ValueError(f"prefixMatchInfoProducerName {self.producer_name!r} names no prefix match producer")
            self._producer = p

    def validate(self, profiles) -> None:
        if self.prefill == self.decode:
            raise ValueError(f"profiles.decode and profiles.prefill are both {self.decode!r}")
        if self.decode not in profiles:
            raise ValueError(f"no scheduling profile {self.decode!r} for the decode stage (profiles.decode); "
                             f"profiles: {sorted(profiles)}")
        if self.decider is not None:
            if self.prefill not in profiles:
                raise ValueError(f"deciders.prefill is {self.decider_name!r} but there is no scheduling profile "
                                 f"{self.prefill!r} for the prefill stage (profiles.prefill); "
                                 f"profiles: {sorted(profiles)}")
            self.decider.attach(profiles[self.decode], self._producer)
            self.decider.attach_prefill(profiles[self.prefill])

    def sub_plugins(self) -> list:
        return [self.decider] if self.decider is not None else []

    # ------------------------------------------------------------------ scheduling

    def pick_profiles(self, state, request, profiles, results):
        if self.order == PREFILL_FIRST_ORDER:
            if self.prefill not in results and self.prefill in profiles:
                return [profiles[self.prefill]]
            return [] if self.decode in results else [profiles[self.decode]]
        decode = results.get(self.decode)
        if decode is None:
            return [profiles[self.decode]]
        if not decode.targets or self.prefill in results or self._key in state:
            return []
        if self.decider is None:
            state[self._key] = (False, NO_DECIDER, "no deciders.prefill configured")
            return []
        verdict = state[self._key] = self.decider.decide(state, request, decode.targets[0])
        return [profiles[self.prefill]] if verdict[0] else []

    def process_results(self, state, request, results):
        decode = results.get(self.decode) or ProfileResult(targets=[])
        out = {self.decode: decode}
        if not decode.targets:
            return SchedulingResult(profiles={**results, **out}, primary=self.decode, prefill=self.prefill)
        wanted, reason, detail = state.get(self._key) or (True, PREFILL_FIRST, "stageOrder prefill-first")
        decision = DECODE_ONLY
        prefill = results.get(self.prefill)
        if prefill is not None:
            # a pod that serves both roles may win both profiles: sending it its own prefill saves nothing
            same = decode.targets[0].address
            picked = prefill.targets
            targets = [ep for ep in picked if ep.address != same]
            if len(targets) != len(picked):
                prefill = ProfileResult(targets=targets, scores=prefill.scores, filtered=prefill.filtered,
                                        raw=prefill.raw)
            out[self.prefill] = prefill
            if targets:
                decision = PREFILL_DECODE
            elif picked:
                reason, detail = SAME_POD, f"{detail}; the prefill pick is the decode pod {same}"
            else:
                reason, detail = NO_PREFILL_POD, f"{detail}; profile {self.prefill!r} left no prefill endpoint"
        elif wanted:  # prefill-first without a prefill profile
            reason, detail = NO_PREFILL_POD, f"no scheduling profile {self.prefill!r}"
        record(self, request.target_model, decision, reason)
        return SchedulingResult(profiles=out, primary=self.decode, prefill=self.prefill,
                                reasons={"pd_decision": decision, "pd_reason": reason, "pd_detail": detail})

    def pre_request(self, state, request, result):
        return prefill_header(result, self.prefill)
