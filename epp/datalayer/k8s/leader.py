"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does: the holder
renews the lease every retryPeriod; another replica takes it over once renewTime + leaseDuration has
passed without a renewal. Updates carry the lease's resourceVersion, so two replicas racing for an
expired lease cannot both win (the loser gets 409 Conflict). A leader that cannot renew within
renewDeadline steps down before anyone else can take over."""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Callable

import orjson
from kubernetes_asyncio import client

log = logging.getLogger(__name__)


def _now_micro() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(s: str | None) -> float:
    if not s:
        return 0.0
    s = s.rstrip("Z")
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in s else "%Y-%m-%dT%H:%M:%S"
    return dt.datetime.strptime(s, fmt).replace(tzinfo=dt.timezone.utc).timestamp()


class LeaderElector:
    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str,
                 on_change: Callable[[bool], None], lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0) -> None:
        self.coord = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.on_change = on_change
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self.leader = False
        self._last_renew = 0.0
        self._held_at_stop = False

    def _set(self, leader: bool) -> None:
        if leader != self.leader:
            self.leader = leader
            log.info("leader election %s/%s: %s is %s", self.namespace, self.name, self.identity,
                     "now the leader" if leader else "no longer the leader")
            self.on_change(leader)

    async def run(self) -> None:
        try:
            while True:
                try:
                    ok = await self._try()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # network or API trouble: keep trying, step down at the deadline
                    log.warning("lease %s/%s: %s", self.namespace, self.name, e)
                    ok = False
                if ok:
                    self._last_renew = time.monotonic()
                    self._set(True)
                elif not self.leader or time.monotonic() - self._last_renew > self.renew_deadline:
                    self._set(False)
                await asyncio.sleep(self.retry_period)
        finally:
            self._held_at_stop = self.leader
            self._set(False)

    async def _try(self) -> bool:
        """One acquire-or-renew round; True when we hold the lease afterwards."""
        resp = await self.coord.read_namespaced_lease(self.name, self.namespace, _preload_content=False)
        try:
            status, body = resp.status, await resp.read()
        finally:
            resp.release()
        now = _now_micro()
        if status == 404:
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": self.name, "namespace": self.namespace},
                     "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_duration),
                              "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
            return await self._write("create", lease)
        if status != 200:
            raise RuntimeError(f"reading the lease: HTTP {status}")
        lease = orjson.loads(body)
        spec = lease.setdefault("spec", {})
        holder = spec.get("holderIdentity")
        if holder != self.identity:
            duration = spec.get("leaseDurationSeconds") or self.lease_duration
            if holder and _parse_time(spec.get("renewTime")) + duration > time.time():
                return False  # held by someone alive
            spec["leaseTransitions"] = (spec.get("leaseTransitions") or 0) + 1
            spec["acquireTime"] = now
            spec["holderIdentity"] = self.identity
            spec["leaseDurationSeconds"] = int(self.lease_duration)
        spec["renewTime"] = now
        return await self._write("replace", lease)

    async def _write(self, how: str, lease: dict) -> bool:
        if how == "create":
            resp = await self.coord.create_namespaced_lease(self.namespace, lease, _preload_content=False)
        else:
            resp = await self.coord.replace_namespaced_lease(self.name, self.namespace, lease, _preload_content=False)
        try:
            status = resp.status
            await resp.read()
        finally:
            resp.release()
        if status in (200, 201):
            return True
        if status == 409:  # someone else wrote first
            return False
        raise RuntimeError(f"{how} lease: HTTP {status}")

    async def release(self) -> None:
        """Gives the lease up at shutdown (as client-go's ReleaseOnCancel) so a standby takes over at
        once instead of after the lease expires. Call after cancelling run()."""
        if not self._held_at_stop:
            return
        try:
            resp = await self.coord.read_namespaced_lease(self.name, self.namespace, _preload_content=False)
            try:
                status, body = resp.status, await resp.read()
            finally:
                resp.release()
            if status != 200:
                return
            lease = orjson.loads(body)
            spec = lease.setdefault("spec", {})
            if spec.get("holderIdentity") != self.identity:
                return
            now = _now_micro()
            spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=now, acquireTime=now)
            if await self._write("replace", lease):
                log.info("leader election %s/%s: released by %s", self.namespace, self.name, self.identity)
        except Exception as e:  # best effort: the lease expires anyway
            log.warning("lease %s/%s: release failed: %s", self.namespace, self.name, e)
