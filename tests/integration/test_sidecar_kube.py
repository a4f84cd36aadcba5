"""epp-sidecar's SSRF allowlist from an InferencePool and its pods, through the real Kubernetes client
against the loopback API-server stand-in: members follow the pods as they come, go and turn unready."""
from __future__ import annotations


import aiohttp
import pytest
from aiohttp import web

from epp.sidecar.options import parse
from epp.sidecar.server import SidecarServer
from testbed.ports import free_port
from testbed.wait import until

from .fake_kube import FakeKube, inference_pool, pod

POOLS = ("inference.networking.k8s.io", "inferencepools")
PODS = ("", "pods")


@pytest.fixture
def kube(tmp_path, monkeypatch):
    k = FakeKube()
    monkeypatch.setenv("KUBECONFIG", k.kubeconfig(str(tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield k
    k.close()


async def _ok_server():
    """The prefill pod and the local vLLM in one: answers every leg."""
    async def handle(request):
        await request.read()
        return web.json_response({"kv_transfer_params": {"do_remote_prefill": True}, "choices": [],
                                  "usage": {"prompt_tokens": 1}})
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


async def test_members_of_the_inference_pool(kube, monkeypatch):
    runner, port = await _ok_server()
    # the decode pods' environment, as manifests/model-servers/*-pd set it
    monkeypatch.setenv("INFERENCE_POOL", "ns1/pool")
    kube.put(*POOLS, "ns1", inference_pool("pool", {"app": "vllm"}, [port]))
    kube.put(*PODS, "ns1", pod("prefill-a", "127.0.0.1", {"app": "vllm", "llm-d.ai/role": "prefill"}))
    kube.put(*PODS, "ns1", pod("other", "127.0.0.2", {"app": "other"}))
    cfg = parse([f"--port={free_port()}", f"--vllm-port={port}", "--kv-connector=nixlv2", "--enable-ssrf-protection",
                 "--bind-address=127.0.0.1", "--secure-proxy=false"])
    server = SidecarServer(cfg)
    await server.start()
    url = f"http://127.0.0.1:{server.ports[0]}/v1/completions"

    async def status(target):
        async with http.post(url, json={"prompt": "x"}, headers={"x-prefiller-host-port": target}) as r:
            return r.status
    try:
        async with aiohttp.ClientSession() as http:
            await until(lambda: server.allowlist.allowed(f"127.0.0.1:{port}"), "the pool's pods listed")
            assert await status(f"127.0.0.1:{port}") == 200
            assert await status(f"127.0.0.2:{port}") == 403               # a pod outside the pool's selector
            assert await status("127.0.0.1:1") == 403                      # a pool pod, not a target port
            kube.put(*PODS, "ns1", pod("prefill-a", "127.0.0.1", {"app": "vllm"}, ready=False))
            await until(lambda: not server.allowlist.allowed(f"127.0.0.1:{port}"), "the unready pod dropped")
            assert await status(f"127.0.0.1:{port}") == 403
            kube.put(*PODS, "ns1", pod("prefill-b", "127.0.0.2", {"app": "vllm"}))     # a new pool pod
            await until(lambda: server.allowlist.allowed(f"127.0.0.2:{port}"), "the new pod listed")
            kube.delete(*POOLS, "ns1", "pool")
            await until(lambda: not server.allowlist.members(), "the deleted pool emptied")
    finally:
        await server.stop()
        await runner.cleanup()
