"""epp-sidecar (the console script) in front of a real decode vllm_sim, with a real prefill vllm_sim:
vLLM's NixlConnector contract end to end (the KV moves over NIXL where it is installed, else over the
sims' HTTP side channel)."""
from __future__ import annotations

import asyncio
import json
import os
import sys

import aiohttp
import orjson
import pytest

from testbed.children import Children
from testbed.endpoints import write_endpoints
from testbed.ports import free_port
from testbed.wait import until, wait_port

PY = sys.executable
SIDECAR = os.path.join(os.path.dirname(PY), "epp-sidecar")
KVT = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"})
UCX_LOOPBACK = {"UCX_NET_DEVICES": "lo", "UCX_TLS": "tcp,self,sm"}
# ten times slower than the modelled GPU: a long prefill and a long stream last long enough to be cut
# in the middle (nothing below waits on the clock: every wait is for a state the sims report)
SLOW = ("--time-scale", "0.1")
HANG = 60.0
LONG = "the customer asks about the invoice, the refund and the shipping policy of the order " * 60


class Sim:
    def __init__(self, kids: Children, name: str, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        self.proc = kids.start(name, [PY, "-m", "vllm_sim", "--port", str(self.port), "--seed", "1", *flags],
                               env=UCX_LOOPBACK)


@pytest.fixture(scope="module")
def pd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sidecar")
    kids = Children(str(tmp))
    try:
        # chunked prefill (512 tokens a step): a long prompt is seen running for several steps
        prefill = Sim(kids, "prefill", "--kv-transfer-config", KVT, "--engine-id",
                      "prefill-0", "--max-num-batched-tokens", "512", *SLOW)
        decode = Sim(kids, "decode", "--kv-transfer-config", KVT, *SLOW)
        aggregated = Sim(kids, "aggregated", "--time-scale", "20")
        down = free_port()                      # a pool member whose pod is down
        efile = tmp / "endpoints.yaml"
        write_endpoints(efile, [("prefill-0", prefill.address), ("prefill-1", f"127.0.0.1:{down}")],
                        {"llm-d.ai/role": "prefill"})
        port, metrics = free_port(), free_port()
        sidecar = kids.start("sidecar", [SIDECAR, "--port", str(port), "--vllm-port", str(decode.port),
                                         "--kv-connector", "nixlv2", "--enable-ssrf-protection", "--secure-proxy=false",
                                         "--endpoints-file", str(efile), "--bind-address", "127.0.0.1",
                                         "--metrics-port", str(metrics)])
        for what, p, proc in (("prefill sim", prefill.port, prefill.proc), ("decode sim", decode.port, decode.proc),
                              ("aggregated sim", aggregated.port, aggregated.proc), ("sidecar", port, sidecar)):
            wait_port(p, HANG, proc, what)

        class PD:
            pass
        s = PD()
        s.prefill, s.decode, s.aggregated, s.down = prefill, decode, aggregated, f"127.0.0.1:{down}"
        s.url, s.metrics_url, s.tmp = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics}/metrics", tmp
        yield s
    finally:
        kids.stop_all()


async def get(http, url):
    async with http.get(url) as r:
        return await r.json()


async def complete(http, url, body, target=None):
    headers = {"x-prefiller-host-port": target} if target else {}
    async with http.post(url + "/v1/completions", json=body, headers=headers) as r:
        return r.status, await r.read()


async def idle_and_free(http, sim):
    """No request running, waiting or pinned, and every KV block free."""
    eng = await until(lambda: get(http, sim.url + "/debug/engine"), f"{sim.url} idle",
                      test=lambda d: d["running"] == 0 and d["waiting"] == 0 and d["pinned"] == 0)
    kv = await get(http, sim.url + "/debug/kv_cache")
    assert kv["usage"] == 0.0, kv["usage"]
    return eng


async def sidecar_count(http, pd, outcome) -> int:
    async with http.get(pd.metrics_url) as r:
        text = await r.text()
    return int(next(line.rsplit(" ", 1)[1] for line in text.splitlines()
                    if line.startswith(f'epp_sidecar_requests_total{{outcome="{outcome}"}}')))


async def test_long_prompt_prefill_then_decode_same_output_as_aggregated(pd):
    body = {"model": "sim-model", "prompt": LONG, "max_tokens": 8, "ignore_eos": True, "seed": 7}
    async with aiohttp.ClientSession() as http:
        p0, d0 = await get(http, pd.prefill.url + "/debug/engine"), await get(http, pd.decode.url + "/debug/engine")
        status, raw = await complete(http, pd.url, body, pd.prefill.address)
        assert status == 200, raw
        doc = orjson.loads(raw)
        _, agg = await complete(http, pd.aggregated.url, body)
        assert doc["choices"][0]["text"] == orjson.loads(agg)["choices"][0]["text"]
        # both legs ran: the decode sim pulled the prefill sim's pinned blocks once, which released them
        p1, d1 = await idle_and_free(http, pd.prefill), await idle_and_free(http, pd.decode)
        assert p1["pd"]["released"] - p0["pd"]["released"] == 1
        print(f"\nKV moved by: {d1['pd']['transport']}")
        assert d1["pd"]["pulls"] - d0["pd"]["pulls"] == 1 and d1["pd"]["pull_failures"] == d0["pd"]["pull_failures"]
        assert p1["requests_served"] - p0["requests_served"] == 1
        # cached_tokens is what the prefill leg reported (an uncached prompt there), not the pulled tokens
        assert doc["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        assert doc["usage"]["completion_tokens"] == 8
        assert doc["id"].startswith("cmpl-") and len(doc["id"]) == len("cmpl-") + 36      # the sidecar's request id

        # streamed, with usage: the same text, chunk by chunk, and the same cached_tokens
        sbody = {**body, "prompt": LONG + " streamed", "stream": True, "stream_options": {"include_usage": True}}
        async with http.post(pd.url + "/v1/completions", json=sbody,
                             headers={"x-prefiller-host-port": pd.prefill.address}) as r:
            events = [e for e in (await r.read()).split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        chunks = [orjson.loads(e[6:]) for e in events[:-1]]
        _, agg = await complete(http, pd.aggregated.url, {**body, "prompt": sbody["prompt"]})
        assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == \
            orjson.loads(agg)["choices"][0]["text"]
        # the prefill pod had the shared prefix (whole blocks) cached from the request above; the decode
        # engine itself would count every pulled token (prompt - 1)
        usage = chunks[-1]["usage"]
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        assert 0 < cached < usage["prompt_tokens"] - 1 and cached % 16 == 0
        d2 = await idle_and_free(http, pd.decode)
        assert d2["pd"]["pulls"] - d1["pd"]["pulls"] == 1


async def test_prefill_pod_down_decodes_alone(pd):
    body = {"model": "sim-model", "prompt": LONG + " down", "max_tokens": 4, "ignore_eos": True, "seed": 3}
    async with aiohttp.ClientSession() as http:
        d0 = await get(http, pd.decode.url + "/debug/engine")
        before = await sidecar_count(http, pd, "prefill_fallback")
        status, raw = await complete(http, pd.url, body, pd.down)
        assert status == 200
        _, agg = await complete(http, pd.aggregated.url, body)
        assert orjson.loads(raw)["choices"][0]["text"] == orjson.loads(agg)["choices"][0]["text"]
        d1 = await idle_and_free(http, pd.decode)
        assert d1["pd"]["pulls"] == d0["pd"]["pulls"]                     # prefilled locally
        assert await sidecar_count(http, pd, "prefill_fallback") == before + 1


async def test_ssrf_target_outside_the_pool_is_refused(pd):
    async with aiohttp.ClientSession() as http:
        a0 = await get(http, pd.aggregated.url + "/debug/engine")
        status, raw = await complete(http, pd.url, {"prompt": "hi", "max_tokens": 1}, pd.aggregated.address)
        assert status == 403 and b"SSRF" in raw
        assert (await get(http, pd.aggregated.url + "/debug/engine"))["requests_served"] == a0["requests_served"]


async def test_client_cancel_during_prefill_aborts_the_prefill(pd):
    body = {"model": "sim-model", "prompt": LONG * 3, "max_tokens": 4, "ignore_eos": True}
    async with aiohttp.ClientSession() as http:
        d0 = await get(http, pd.decode.url + "/debug/engine")
        before = await sidecar_count(http, pd, "client_disconnects")
        client = aiohttp.ClientSession()
        task = asyncio.create_task(complete(client, pd.url, body, pd.prefill.address))
        # running between two chunks of its prefill (a finished request leaves `running` in the step that
        # computes its last chunk)
        await until(lambda: get(http, pd.prefill.url + "/debug/engine"), "the prefill leg running",
                    test=lambda d: d["running"] == 1)
        task.cancel()
        await client.close()
        await idle_and_free(http, pd.prefill)          # aborted mid-prefill: its blocks are free, none pinned
        await until(lambda: sidecar_count(http, pd, "client_disconnects"), "the sidecar to count the disconnect",
                    test=lambda n: n == before + 1)
        d1 = await idle_and_free(http, pd.decode)
        assert d1["requests_served"] == d0["requests_served"]               # no decode leg was sent


async def test_client_cancel_mid_stream_aborts_the_decode_and_frees_both_pods(pd):
    body = {"model": "sim-model", "prompt": LONG + " cancelled", "max_tokens": 2000, "ignore_eos": True,
            "stream": True}
    async with aiohttp.ClientSession() as http:
        client = aiohttp.ClientSession()
        r = await client.post(pd.url + "/v1/completions", json=body,
                              headers={"x-prefiller-host-port": pd.prefill.address})
        assert r.status == 200
        first = await r.content.readuntil(b"\n\n")
        assert first.startswith(b"data: ") and orjson.loads(first[6:])["choices"][0]["text"]
        assert (await get(http, pd.decode.url + "/debug/engine"))["running"] == 1
        r.close()                                       # the client goes away mid-stream
        await client.close()
        d = await idle_and_free(http, pd.decode)        # the decode request was aborted, its blocks freed
        p = await idle_and_free(http, pd.prefill)       # the prefill's blocks were released after the pull
        assert d["pd"]["pull_failures"] == 0 and p["pinned"] == 0
