"""InferenceObjective and InferenceModelRewrite objects that point at our pool, kept current.

Objectives: name -> priority (an unset priority is 0), chosen per request by the header
x-gateway-inference-objective. Rewrites: rules that map a requested model name to weighted targets.
What request control does with them lives there; this only watches and hands over plain data.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from kubernetes_asyncio import client

from .reflector import Reflector

log = logging.getLogger(__name__)

GROUP = "inference.networking.x-k8s.io"
VERSION = "v1alpha2"


class _Watched:
    """Objects of one kind in a namespace whose spec.poolRef names our pool."""

    def __init__(self, api, namespace: str, plural: str, pool: str, changed: Callable[[dict[str, dict]], None],
                 **reflector_kw) -> None:
        self.pool, self.changed = pool, changed
        self.objects: dict[str, dict] = {}
        custom = client.CustomObjectsApi(api)

        def call(**kw):
            return custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural, **kw)
        self.reflector = Reflector(f"{plural} {namespace}", call, self._sync, self._event, **reflector_kw)

    def _ours(self, obj: dict) -> bool:
        ref = (obj.get("spec") or {}).get("poolRef") or {}
        return ref.get("name") == self.pool

    def _sync(self, items: list[dict]) -> None:
        self.objects = {o["metadata"]["name"]: o for o in items if self._ours(o)}
        self.changed(self.objects)

    def _event(self, kind: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED" or not self._ours(obj):
            if self.objects.pop(name, None) is None:
                return
        else:
            self.objects[name] = obj
        self.changed(self.objects)


def objective_priorities(objects: dict[str, dict]) -> dict[str, int]:
    out = {}
    for name, obj in objects.items():
        prio = (obj.get("spec") or {}).get("priority")
        out[name] = prio if isinstance(prio, int) and not isinstance(prio, bool) else 0
    return out


def rewrite_rules(objects: dict[str, dict]) -> list[tuple[str | None, list[tuple[str, int]]]]:
    """[(model to match or None for every model, [(target model, weight), ...]), ...]: rules with an
    exact model match first (they take precedence), then catch-all rules; objects by name, so the
    order does not depend on event order."""
    exact, general = [], []
    for name in sorted(objects):
        for rule in (objects[name].get("spec") or {}).get("rules") or ():
            targets = [(t.get("modelRewrite"), t.get("weight") or 1) for t in rule.get("targets") or ()
                       if isinstance(t, dict) and isinstance(t.get("modelRewrite"), str) and t.get("modelRewrite")]
            if not targets:
                continue
            matches = [m.get("model") or {} for m in rule.get("matches") or () if isinstance(m, dict)]
            models = [m.get("value") for m in matches if isinstance(m.get("value"), str)
                      and (m.get("type") or "Exact") == "Exact"]
            if not matches:
                general.append((None, targets))
            for model in models:
                exact.append((model, targets))
    return exact + general


class ObjectivesWatch:
    def __init__(self, api, namespace: str, pool: str, on_objectives: Callable[[dict[str, int]], None],
                 on_rewrites: Callable[[list], None], **reflector_kw) -> None:
        self.objectives = _Watched(api, namespace, "inferenceobjectives", pool,
                                   lambda objs: on_objectives(objective_priorities(objs)), **reflector_kw)
        self.rewrites = _Watched(api, namespace, "inferencemodelrewrites", pool,
                                 lambda objs: on_rewrites(rewrite_rules(objs)), **reflector_kw)

    async def run(self) -> None:
        await asyncio.gather(self.objectives.reflector.run(), self.rewrites.reflector.run())
