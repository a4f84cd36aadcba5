"""SSRF protection: the prefill target named by `x-prefiller-host-port` must be a member of the pool.

Members come from epp's endpoints file (re-read when it changes) and/or, on Kubernetes, the
InferencePool and the Ready pods its selector matches on its target ports (epp's own discovery). A
target matches a member's `ip:port` exactly: a pool pod's other ports (metrics, the NIXL side channel)
are not reachable through the sidecar. Upstream's sidecar compares the host alone (pod IP or pod name).
"""
from __future__ import annotations

import asyncio
import logging

from ..datalayer.address import canonical
from ..datalayer.file_source import EndpointsFile
from ..datalayer.store import EndpointStore

log = logging.getLogger("epp.sidecar.allowlist")


def target_address(target: str) -> str | None:
    """`ip:port` in epp's canonical form, or None when the target is not an IP address and port."""
    target = target.strip()
    if target.startswith("http://"):
        target = target[len("http://"):]
    try:
        return canonical(target)
    except ValueError:
        return None


class Allowlist:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.stores: list[EndpointStore] = []
        self._tasks: list[asyncio.Task] = []
        self._api = None
        self.file: EndpointsFile | None = None

    def allowed(self, target: str) -> bool:
        if not self.enabled:
            return True
        addr = target_address(target)
        return addr is not None and any(s.get(addr) is not None for s in self.stores)

    def members(self) -> set[str]:
        return {ep.address for s in self.stores for ep in s.snapshot()}

    def add_store(self, store: EndpointStore) -> None:
        self.stores.append(store)

    async def start(self, endpoints_file: str | None = None, poll_interval: float = 1.0,
                    pool: tuple[str, str, str] | None = None) -> None:
        """endpoints_file: loaded now (an unusable file stops the start), then watched.
        pool: (namespace, name, group) of the InferencePool to watch."""
        if not self.enabled:
            return
        if endpoints_file:
            store = EndpointStore()
            self.file = EndpointsFile(endpoints_file, store, poll_interval)
            try:
                self.file.load()
            except FileNotFoundError:   # written after the sidecar starts (a local stack): watched for
                log.warning("endpoints file %s does not exist yet: every prefill target is refused until it "
                            "does", endpoints_file)
            self.add_store(store)
            self._tasks.append(asyncio.create_task(self.file.watch(), name="sidecar endpoints file"))
            log.info("SSRF allowlist: %d endpoints from %s", len(store.snapshot()), endpoints_file)
        if pool:
            from ..datalayer.k8s.client import api_client
            from ..datalayer.k8s.pool import PoolDiscovery
            ns, name, group = pool
            store = EndpointStore()
            self._api = await api_client()
            disc = PoolDiscovery(self._api, store, ns, name, group)
            self.add_store(store)
            self._tasks.append(asyncio.create_task(disc.run(), name="sidecar InferencePool watch"))
            log.info("SSRF allowlist: members of InferencePool %s/%s", ns, name)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._api is not None:
            await self._api.close()
            self._api = None
