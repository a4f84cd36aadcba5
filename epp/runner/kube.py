"""The Kubernetes side of a running epp: endpoints from an InferencePool (or a label selector),
objectives and model rewrites, and the leader lease in HA mode."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from ..datalayer.k8s.client import api_client
from ..datalayer.k8s.leader import LeaderElector
from ..datalayer.k8s.objectives import ObjectivesWatch
from ..datalayer.k8s.pool import PoolDiscovery, SelectorDiscovery
from ..datalayer.store import EndpointStore
from ..requestcontrol.director import Director

log = logging.getLogger(__name__)

POOL_GROUP = "inference.networking.k8s.io"


def lease_name(namespace: str, pool_name: str) -> str:
    """llm-d router v0.10's lease name, so Go and Python replicas of one pool elect one leader. Without a
    pool (--endpoint-selector) upstream names the pool after the Deployment, from POD_NAME."""
    if not pool_name:
        parts = (os.environ.get("POD_NAME") or "").rsplit("-", 2)
        pool_name = parts[0] if len(parts) == 3 and parts[0] else "standalone"
    return f"epp-{namespace}-{pool_name}.llm-d.ai"


class KubernetesSources:
    def __init__(self, args, store: EndpointStore, director: Director) -> None:
        self.args, self.store, self.director = args, store, director
        self.tasks: list[asyncio.Task] = []
        self.api = None
        self.leader: LeaderElector | None = None
        self.leader_task: asyncio.Task | None = None

    @property
    def is_leader(self) -> bool:
        return self.leader is None or self.leader.leader

    async def start(self, reflector_kw: dict | None = None) -> None:
        a = self.args
        kw = reflector_kw or {}
        self.api = await api_client(a.kubeconfig)
        ns = a.pool_namespace
        if a.pool_name:
            # as upstream (v0.10 and GIE v1.5): the pool is always read as inference.networking.k8s.io/v1;
            # --pool-group names the pool's group for references to it, not where it is read
            disc = PoolDiscovery(self.api, self.store, ns, a.pool_name, POOL_GROUP, **kw)
            objectives = ObjectivesWatch(self.api, ns, a.pool_name, self.director.set_objectives,
                                         self._set_rewrites, **kw)
            self.tasks.append(asyncio.create_task(objectives.run(), name="objectives and rewrites"))
            log.info("discovering endpoints from InferencePool %s/%s (%s/v1; --pool-group %s)", ns, a.pool_name,
                     POOL_GROUP, a.pool_group)
        else:
            disc = SelectorDiscovery(self.api, self.store, ns, a.endpoint_selector, a.endpoint_target_ports, **kw)
            log.info("discovering endpoints from pods %s in %s, ports %s", a.endpoint_selector, ns,
                     a.endpoint_target_ports)
        self.tasks.append(asyncio.create_task(disc.run(), name="endpoint discovery"))
        if a.ha_enable_leader_election:
            # unique per process, as client-go does: a restarted container must not inherit the old lease
            identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
            self.leader = LeaderElector(self.api, ns, lease_name(ns, a.pool_name),
                                        identity, lambda leader: None, lease_duration=a.leader_election_lease_duration,
                                        renew_deadline=a.leader_election_renew_deadline,
                                        retry_period=a.leader_election_retry_period)
            self.leader_task = asyncio.create_task(self.leader.run(), name="leader election")
            self.tasks.append(self.leader_task)

    async def release_leadership(self) -> None:
        """Shutdown: stop competing for the lease and give it up, so a standby leads at once."""
        if self.leader is None or self.leader_task is None:
            return
        self.leader_task.cancel()
        await asyncio.gather(self.leader_task, return_exceptions=True)
        await self.leader.release()

    def _set_rewrites(self, rules: list) -> None:
        self.director.rewrites.rules = rules
        log.info("model rewrites: %d rule(s)", len(rules))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        if self.api is not None:
            await self.api.close()
