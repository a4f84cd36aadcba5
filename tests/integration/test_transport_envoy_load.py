"""Envoy with 1,000 requests in flight at once: 1,000 concurrent ext_proc streams (under the advertised
limit of 1,024), every request routed and answered, on either transport."""
import asyncio
import hashlib
import json
import os

import aiohttp
import pytest

from testbed.endpoints import write_endpoints
from testbed.standin_pod import Pod

from .stack import Envoy, Epp, PodGroup

pytestmark = pytest.mark.envoy
N = 1000


class GatedPod(Pod):
    """Holds every inference request until the test opens the gate, counting arrivals."""

    arrived = 0

    async def start(self) -> None:
        self.gate = asyncio.Event()
        await super().start()

    async def _handle(self, method, path, headers, body, writer) -> None:
        if path.startswith(b"/v1/"):
            GatedPod.arrived += 1
            await self.gate.wait()
        await super()._handle(method, path, headers, body, writer)


async def admin_stat(http: aiohttp.ClientSession, port: int, name: str) -> int:
    async with http.get(f"http://127.0.0.1:{port}/stats?filter=^{name}$") as r:
        text = await r.text()
    return int(text.split(":")[1]) if ":" in text else 0


@pytest.mark.parametrize("transport", ["native", "grpcio"])
async def test_a_thousand_concurrent_streams_through_envoy(tmp_path, transport):
    tmp = str(tmp_path)
    pods = PodGroup(0)
    GatedPod.arrived = 0
    for i in range(2):
        pod = GatedPod(0, name=f"pod-{i}")
        asyncio.run_coroutine_threadsafe(pod.start(), pods.loop).result(5)
        pods.pods.append(pod)
    write_endpoints(f"{tmp}/endpoints.yaml", pods.pods)
    epp = Epp(tmp, f"{tmp}/endpoints.yaml", "--ext-proc-server", transport, "--shutdown-grace-period", "0s")
    envoy = Envoy(tmp, ["FULL_DUPLEX_STREAMED"], epp.ports["grpc"])
    with open(f"{tmp}/envoy.json") as f:
        admin = json.load(f)["admin"]["address"]["socket_address"]["port_value"]
    pool = {p.address for p in pods.pods}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=120)) as http:
            async def one(i: int):
                body = json.dumps({"model": "m", "prompt": f"request {i}"}).encode()
                async with http.post(f"http://127.0.0.1:{envoy.ports['FULL_DUPLEX_STREAMED']}/v1/completions",
                                     data=body, headers={"content-type": "application/json"}) as r:
                    return r.status, await r.read(), hashlib.sha256(body).hexdigest()
            calls = [asyncio.create_task(one(i)) for i in range(N)]
            while GatedPod.arrived < N:    # every request is at a pod, so every ext_proc stream is open
                assert not any(c.done() for c in calls), [c.result()[:2] for c in calls if c.done()][:3]
                await asyncio.sleep(0.05)
            assert await admin_stat(http, admin, "cluster.epp.upstream_rq_active") == N
            # each Envoy worker multiplexes its calls on one connection: the stream limit made none spill
            assert 1 <= await admin_stat(http, admin, "cluster.epp.upstream_cx_active") <= (os.cpu_count() or 1)
            for p in pods.pods:
                pods.loop.call_soon_threadsafe(p.gate.set)
            results = await asyncio.gather(*calls)
            assert await admin_stat(http, admin, "cluster.epp.upstream_rq_4xx") == 0
        for status, raw, sha in results:
            assert status == 200, raw[:200]
            report = json.loads(raw)
            assert report["served_by"] in pool and report["dest_header"] == report["served_by"]
            assert report["body_sha256"] == sha
    finally:
        envoy.stop()
        epp.stop()
        pods.close()
