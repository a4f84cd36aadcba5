"""Discovery from an InferencePool: the pool says which pods (spec.selector.matchLabels) and ports
(spec.targetPorts); a pod watch with that selector feeds the endpoint store. A change of the pool's
selector or ports restarts the pod watch; a deleted pool empties the store. Standalone mode skips the
pool: a label selector and ports from flags."""
from __future__ import annotations

import asyncio
import logging

from kubernetes_asyncio import client

from ..store import EndpointStore
from .pods import PodWatch, selector_string
from .reflector import Reflector

log = logging.getLogger(__name__)

POOL_VERSION = "v1"
POOL_PLURAL = "inferencepools"


def pool_spec(pool: dict) -> tuple[str, list[int]] | None:
    """(label selector, ports) of an InferencePool, or None when it cannot be used."""
    spec = pool.get("spec") or {}
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    ports = [p.get("number") for p in spec.get("targetPorts") or () if isinstance(p, dict)]
    ports = [p for p in ports if isinstance(p, int) and 0 < p < 65536]
    if not labels or not ports:
        return None
    return selector_string(labels), ports


class PoolDiscovery:
    def __init__(self, api: client.ApiClient, store: EndpointStore, namespace: str, name: str,
                 group: str = "inference.networking.k8s.io", **reflector_kw) -> None:
        self.api, self.store, self.namespace, self.name = api, store, namespace, name
        self.reflector_kw = reflector_kw
        self.pods: PodWatch | None = None
        self.spec: tuple[str, list[int]] | None = None
        custom = client.CustomObjectsApi(api)

        def call(**kw):
            return custom.list_namespaced_custom_object(group, POOL_VERSION, namespace, POOL_PLURAL,
                                                        field_selector=f"metadata.name={name}", **kw)
        self.reflector = Reflector(f"InferencePool {namespace}/{name}", call, self._sync, self._event, **reflector_kw)

    async def run(self) -> None:
        try:
            await self.reflector.run()
        finally:
            if self.pods is not None:
                await self.pods.stop()

    def _sync(self, items: list[dict]) -> None:
        self._apply(items[0] if items else None)

    def _event(self, kind: str, pool: dict) -> None:
        self._apply(None if kind == "DELETED" else pool)

    def _apply(self, pool: dict | None) -> None:
        spec = pool_spec(pool) if pool is not None else None
        if pool is None:
            log.warning("InferencePool %s/%s not found; no endpoints until it exists", self.namespace, self.name)
        elif spec is None:
            log.error("InferencePool %s/%s has no usable selector.matchLabels / targetPorts", self.namespace, self.name)
        if spec == self.spec and (spec is not None or self.store.synced):
            return
        self.spec = spec
        old, self.pods = self.pods, None
        if old is not None:
            asyncio.get_running_loop().create_task(old.stop())
        if spec is None:
            self.store.replace([])
            return
        selector, ports = spec
        log.info("InferencePool %s/%s: pods matching %s, ports %s", self.namespace, self.name, selector, ports)
        self.pods = PodWatch(self.api, self.namespace, selector, ports, self.store.replace, **self.reflector_kw)
        self.pods.start()


class SelectorDiscovery:
    """Standalone: --endpoint-selector and --endpoint-target-ports, no InferencePool."""

    def __init__(self, api: client.ApiClient, store: EndpointStore, namespace: str, selector: str,
                 ports: list[int], **reflector_kw) -> None:
        self.pods = PodWatch(api, namespace, selector, ports, store.replace, **reflector_kw)

    async def run(self) -> None:
        self.pods.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.pods.stop()
