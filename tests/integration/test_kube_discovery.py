"""Discovery, objectives, rewrites and leader election through the real Kubernetes client library,
against a loopback server speaking the list/watch wire protocol (no API server can run here)."""
import asyncio
import time

import pytest

from epp.datalayer.k8s.client import api_client
from epp.datalayer.k8s.leader import LeaderElector
from epp.datalayer.k8s.objectives import ObjectivesWatch
from epp.datalayer.k8s.pool import PoolDiscovery, SelectorDiscovery
from epp.datalayer.store import EndpointStore
from testbed.wait import until

from .fake_kube import FakeKube, inference_pool, pod

POOLS = ("inference.networking.k8s.io", "inferencepools")
PODS = ("", "pods")
FAST = {"backoff": (0.05, 0.2), "watch_timeout": 2}


@pytest.fixture
def kube(tmp_path):
    k = FakeKube()
    k.config = k.kubeconfig(str(tmp_path / "kubeconfig"))
    yield k
    k.close()


def addresses(store):
    return sorted(ep.address for ep in store.snapshot())


async def test_pool_pods_churn_reaches_the_store(kube):
    kube.put(*POOLS, "ns1", inference_pool("pool", {"app": "vllm"}, [8000]))
    kube.put(*PODS, "ns1", pod("a", "10.0.0.1", {"app": "vllm", "llm-d.ai/role": "decode"}))
    kube.put(*PODS, "ns1", pod("b", "10.0.0.2", {"app": "vllm"}, ready=False))
    kube.put(*PODS, "ns1", pod("c", "10.0.0.3", {"app": "other"}))
    kube.put(*PODS, "ns1", pod("d", "10.0.0.4", {"app": "vllm"}, terminating=True))
    api = await api_client(kube.config)
    store = EndpointStore()
    disc = PoolDiscovery(api, store, "ns1", "pool", **FAST)
    task = asyncio.create_task(disc.run())
    try:
        await until(lambda: store.synced and addresses(store) == ["10.0.0.1:8000"], what="initial list")
        ep = store.get("10.0.0.1:8000")
        assert ep.labels["llm-d.ai/role"] == "decode" and ep.namespace == "ns1" and ep.name == "a-rank-0"

        kube.put(*PODS, "ns1", pod("b", "10.0.0.2", {"app": "vllm"}))                      # becomes ready
        await until(lambda: addresses(store) == ["10.0.0.1:8000", "10.0.0.2:8000"], what="b ready")
        t0 = time.monotonic()
        kube.put(*PODS, "ns1", pod("a", "10.0.0.1", {"app": "vllm"}, ready=False))         # turns unready
        await until(lambda: addresses(store) == ["10.0.0.2:8000"], what="a unready")
        t1 = time.monotonic()
        assert t1 - t0 < 1.0
        kube.put(*PODS, "ns1", pod("b", "10.0.0.2", {"app": "vllm", "llm-d.ai/role": "prefill"}))  # relabel
        await until(lambda: store.get("10.0.0.2:8000").labels.get("llm-d.ai/role") == "prefill", what="relabel")
        kube.put(*PODS, "ns1", pod("b", "10.0.0.2", {"app": "vllm"}, terminating=True))    # being deleted
        await until(lambda: addresses(store) == [], what="b terminating")
        kube.put(*PODS, "ns1", pod("e", "10.0.0.5", {"app": "vllm"}))
        kube.delete(*PODS, "ns1", "b")
        await until(lambda: addresses(store) == ["10.0.0.5:8000"], what="e added")

        # the pool changes its selector and ports: the pod watch follows
        kube.put(*POOLS, "ns1", inference_pool("pool", {"app": "other"}, [8000, 8001]))
        await until(lambda: addresses(store) == ["10.0.0.3:8000", "10.0.0.3:8001"], what="new selector")
        assert {ep.name for ep in store.snapshot()} == {"c-rank-0", "c-rank-1"}
        kube.delete(*POOLS, "ns1", "pool")
        await until(lambda: addresses(store) == [], what="pool deleted")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()


async def test_watch_resumes_after_drops_and_relists_after_410(kube):
    kube.put(*POOLS, "ns1", inference_pool("pool", {"app": "vllm"}, [8000]))
    for i in range(1, 4):
        kube.put(*PODS, "ns1", pod(f"p{i}", f"10.0.1.{i}", {"app": "vllm"}))
    api = await api_client(kube.config)
    store = EndpointStore()
    disc = PoolDiscovery(api, store, "ns1", "pool", **FAST)
    task = asyncio.create_task(disc.run())
    try:
        await until(lambda: len(store.snapshot()) == 3, what="initial")
        lists_before = sum(r.startswith("LIST pods") for r in kube.requests)

        kube.drop_watches()                                    # connections cut mid-stream
        await asyncio.sleep(0.2)
        kube.put(*PODS, "ns1", pod("p4", "10.0.1.4", {"app": "vllm"}))
        await until(lambda: len(store.snapshot()) == 4, what="event after a dropped watch")
        assert sum(r.startswith("LIST pods") for r in kube.requests) == lists_before   # resumed, no relist

        await asyncio.sleep(0.7)                               # bookmarks move the watch's version on
        assert disc.pods.reflector.resource_version == str(kube.rv) or int(disc.pods.reflector.resource_version) >= kube.rv - 1

        kube.compact()                                         # history gone: resuming gets 410
        kube.drop_watches()
        await asyncio.sleep(0.1)
        kube.delete(*PODS, "ns1", "p1")
        await until(lambda: len(store.snapshot()) == 3 and "10.0.1.1:8000" not in addresses(store), what="relist")
        assert sum(r.startswith("LIST pods") for r in kube.requests) > lists_before
        assert disc.pods.reflector.relists >= 1

        kube.watch_status_410 = True                           # 410 as an HTTP status this time
        kube.compact()
        kube.drop_watches()
        kube.put(*PODS, "ns1", pod("p5", "10.0.1.5", {"app": "vllm"}))
        await until(lambda: "10.0.1.5:8000" in addresses(store), what="relist after HTTP 410")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()


async def test_list_is_paged(kube):
    for i in range(23):
        kube.put(*PODS, "ns1", pod(f"p{i:02d}", f"10.0.2.{i + 1}", {"app": "vllm"}))
    api = await api_client(kube.config)
    store = EndpointStore()
    disc = SelectorDiscovery(api, store, "ns1", "app=vllm", [9000], page_size=5, **FAST)
    task = asyncio.create_task(disc.run())
    try:
        await until(lambda: len(store.snapshot()) == 23, what="23 pods over 5 pages")
        assert sum(r.startswith("LIST pods") for r in kube.requests) == 5
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()


async def test_api_server_down_then_up(kube, tmp_path):
    """Errors back off and recover: a kubeconfig pointing at a closed port, then the real one."""
    api = await api_client(kube.config)
    store = EndpointStore()
    disc = SelectorDiscovery(api, store, "ns1", "app=vllm", [9000], **FAST)
    real = api.configuration.host
    api.configuration.host = "http://127.0.0.1:1"          # nothing listens there
    task = asyncio.create_task(disc.run())
    try:
        await until(lambda: disc.pods.reflector.errors >= 2, what="errors counted")
        assert not store.synced
        api.configuration.host = real
        kube.put(*PODS, "ns1", pod("p", "10.0.3.1", {"app": "vllm"}))
        await until(lambda: addresses(store) == ["10.0.3.1:9000"], what="recovered")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()


async def test_objectives_and_rewrites_for_our_pool(kube):
    grp = "inference.networking.x-k8s.io"
    kube.put(grp, "inferenceobjectives", "ns1", {"metadata": {"name": "batch"},
                                                 "spec": {"priority": -1, "poolRef": {"name": "pool"}}})
    kube.put(grp, "inferenceobjectives", "ns1", {"metadata": {"name": "other-pool"},
                                                 "spec": {"priority": 5, "poolRef": {"name": "elsewhere"}}})
    kube.put(grp, "inferenceobjectives", "ns1", {"metadata": {"name": "plain"}, "spec": {"poolRef": {"name": "pool"}}})
    got = {}
    api = await api_client(kube.config)
    w = ObjectivesWatch(api, "ns1", "pool", lambda p: got.__setitem__("prio", p), lambda r: got.__setitem__("rw", r), **FAST)
    task = asyncio.create_task(w.run())
    try:
        await until(lambda: got.get("prio") == {"batch": -1, "plain": 0}, what="objectives")
        kube.put(grp, "inferencemodelrewrites", "ns1", {"metadata": {"name": "canary"}, "spec": {
            "poolRef": {"name": "pool"},
            "rules": [{"matches": [{"model": {"value": "llama"}}],
                       "targets": [{"modelRewrite": "llama-v2", "weight": 90}, {"modelRewrite": "llama-v3", "weight": 10}]},
                      {"targets": [{"modelRewrite": "fallback"}]}]}})
        await until(lambda: got.get("rw") == [("llama", [("llama-v2", 90), ("llama-v3", 10)]), (None, [("fallback", 1)])],
                    what="rewrites")
        kube.delete(grp, "inferenceobjectives", "ns1", "batch")
        await until(lambda: got.get("prio") == {"plain": 0}, what="objective deleted")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()


async def test_leader_election_one_leader_and_takeover(kube):
    api = await api_client(kube.config)
    changes = []
    kw = dict(lease_duration=1.0, renew_deadline=0.8, retry_period=0.1)
    a = LeaderElector(api, "ns1", "epp-pool-leader", "a", lambda v: changes.append(("a", v)), **kw)
    b = LeaderElector(api, "ns1", "epp-pool-leader", "b", lambda v: changes.append(("b", v)), **kw)
    ta = asyncio.create_task(a.run())
    await until(lambda: a.leader, what="a leads")
    tb = asyncio.create_task(b.run())
    try:
        for _ in range(15):                                     # b keeps trying; a keeps renewing
            await asyncio.sleep(0.05)
            assert a.leader and not b.leader
        lease = kube.get("coordination.k8s.io", "leases", "ns1", "epp-pool-leader")
        assert lease["spec"]["holderIdentity"] == "a"
        ta.cancel()                                            # a stops renewing (crash)
        await asyncio.gather(ta, return_exceptions=True)
        assert not a.leader
        t = await until(lambda: b.leader, timeout=5, what="b takes over")
        lease = kube.get("coordination.k8s.io", "leases", "ns1", "epp-pool-leader")
        assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
        assert t
    finally:
        tb.cancel()
        await asyncio.gather(tb, return_exceptions=True)
        await api.close()
    assert ("a", True) in changes and ("a", False) in changes and ("b", True) in changes
