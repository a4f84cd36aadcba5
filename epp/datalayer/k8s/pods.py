"""Pods to endpoints: one endpoint per Ready, not-terminating pod and active target port, labels carried.

As upstream (llm-d router v0.10): the endpoint of targetPorts[i] is named `<pod>-rank-<i>`, one port or
many (data-parallel ranks each listen on their own port). The pod annotation `llm-d.ai/active-ports`
(legacy: `inference.networking.k8s.io/active-ports`), a comma list of port numbers, narrows the ranks
that take traffic; absent, every target port is active; present but naming no target port, none is."""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from kubernetes_asyncio import client

from ..address import host_port
from ..endpoint import Endpoint
from .reflector import Reflector

log = logging.getLogger(__name__)


def pod_ready(pod: dict) -> bool:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or not status.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


ACTIVE_PORTS = "llm-d.ai/active-ports"
LEGACY_ACTIVE_PORTS = "inference.networking.k8s.io/active-ports"


def active_ports(pod: dict, ports: list[int]) -> set[int]:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    listed = annotations.get(ACTIVE_PORTS, annotations.get(LEGACY_ACTIVE_PORTS))
    if listed is None:
        return set(ports)
    out = set()
    for item in str(listed).split(","):
        try:
            p = int(item.strip())
        except ValueError:
            continue
        if p > 0 and p in ports:
            out.add(p)
    return out


def pod_endpoints(pod: dict, ports: list[int]) -> list[Endpoint]:
    if not pod_ready(pod):
        return []
    meta = pod["metadata"]
    ip = pod["status"]["podIP"]
    labels = {k: str(v) for k, v in (meta.get("labels") or {}).items()}
    name, ns = meta.get("name", ip), meta.get("namespace", "default")
    active = active_ports(pod, ports)
    if not active:
        log.debug("pod %s/%s: no active port among the target ports %s; it takes no traffic", ns, name, ports)
    return [Endpoint(name=f"{name}-rank-{i}", address=host_port(ip, port), labels=labels, namespace=ns)
            for i, port in enumerate(ports) if port in active]


def selector_string(match_labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))


class PodWatch:
    """The pods a label selector matches in one namespace, as endpoints on the given ports."""

    def __init__(self, api: client.ApiClient, namespace: str, selector: str, ports: list[int],
                 publish: Callable[[list[Endpoint]], None], **reflector_kw) -> None:
        self.selector, self.ports, self.publish = selector, ports, publish
        self.pods: dict[str, dict] = {}
        core = client.CoreV1Api(api)

        def call(**kw):
            return core.list_namespaced_pod(namespace, label_selector=selector, **kw)
        self.reflector = Reflector(f"pods {namespace}/{selector or '<all>'}", call, self._sync, self._event,
                                   **reflector_kw)
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.reflector.run(), name=f"watch {self.reflector.what}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    def endpoints(self) -> list[Endpoint]:
        out: list[Endpoint] = []
        for pod in self.pods.values():
            out.extend(pod_endpoints(pod, self.ports))
        return out

    def _sync(self, items: list[dict]) -> None:
        self.pods = {p["metadata"]["name"]: p for p in items}
        self.publish(self.endpoints())

    def _event(self, kind: str, pod: dict) -> None:
        name = pod["metadata"]["name"]
        before = self.pods.get(name)
        if kind == "DELETED":
            self.pods.pop(name, None)
        else:
            self.pods[name] = pod
        # a status-only change that keeps readiness, IP and labels changes no endpoint
        if before is not None and kind != "DELETED" and _same_endpoint_view(before, pod):
            return
        self.publish(self.endpoints())


def _same_endpoint_view(a: dict, b: dict) -> bool:
    return (pod_ready(a) == pod_ready(b) and (a.get("status") or {}).get("podIP") == (b.get("status") or {}).get("podIP")
            and (a["metadata"].get("labels") or {}) == (b["metadata"].get("labels") or {})
            and _active_annotation(a) == _active_annotation(b))


def _active_annotation(pod: dict) -> tuple:
    annotations = pod["metadata"].get("annotations") or {}
    return annotations.get(ACTIVE_PORTS), annotations.get(LEGACY_ACTIVE_PORTS)
