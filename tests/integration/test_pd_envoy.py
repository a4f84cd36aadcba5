"""P/D end to end through the real Envoy: epp with config/pd.yaml picks the decode pod and, for a long
uncached prompt, a prefill pod; the epp-sidecar in front of the decode sim runs the prefill leg; the
decode sim pulls the KV cache from the prefill sim (NIXL where installed, else the sims' HTTP side
channel). The pods are started by the local stack's own code (testbed.pd, as hack/stack.sh --topology pd).
The last test runs config/pd-flex.yaml on a flex pod (prefill-decode) beside a decode pod."""
from __future__ import annotations

import json
import sys

import aiohttp
import orjson
import pytest

from testbed import pd as pd_pods
from testbed.children import Children
from testbed.ports import free_port
from testbed.wait import until, wait_port

from .stack import Envoy, Epp

pytestmark = pytest.mark.envoy
MODE = "FULL_DUPLEX_STREAMED"
PY = sys.executable
HANG = 60.0
LONG = "the customer asks about the invoice, the refund and the shipping policy of the order " * 40   # ~700 tokens
SHORT = "What is the capital of France?"                                                          # < nonCachedTokens


def _stack(tmp_path_factory, name: str, prefill: int, decode: int, config: str, flex: int = 0):
    """The pods (testbed.pd), an aggregated sim to compare answers with, epp with `config` and Envoy."""
    tmp = tmp_path_factory.mktemp(name)
    kids = Children(str(tmp))
    efile = str(tmp / "endpoints.yaml")
    try:
        pods = pd_pods.start(kids, prefill, decode, efile, ["--time-scale", "5", "--seed", "1"], flex=flex)
        assert pods["sidecar"] == "epp-sidecar"
        agg_port = free_port()
        agg = kids.start("aggregated", [PY, "-m", "vllm_sim", "--port", str(agg_port), "--time-scale", "20", "--seed", "1"])
        wait_port(agg_port, HANG, agg, "aggregated sim")
        epp = Epp(str(tmp), efile, "--config-file", config, "--decision-header", "--refresh-metrics-interval", "50ms")
        envoy = Envoy(str(tmp), [MODE], epp.ports["grpc"])

        class PD:
            pass
        s = PD()
        s.kids, s.epp, s.envoy = kids, epp, envoy
        s.prefill = pods["prefill"][0] if prefill else None
        s.flex = pods["flex"][0] if flex else None
        s.decode = pods["decode"][0]
        s.url = f"http://127.0.0.1:{envoy.ports[MODE]}"
        s.aggregated = f"http://127.0.0.1:{agg_port}"
        s.sims = pods["sims"]
        yield s
        envoy.stop()
        epp.stop()
    finally:
        kids.stop_all()


@pytest.fixture(scope="module")
def pd(tmp_path_factory):
    yield from _stack(tmp_path_factory, "pd-envoy", 1, 1, pd_pods.EPP_CONFIG)


@pytest.fixture(scope="module")
def pd_flex(tmp_path_factory):
    """A flex pod (prefill-decode) beside a decode pod, epp with config/pd-flex.yaml."""
    yield from _stack(tmp_path_factory, "pd-flex-envoy", 0, 1, pd_pods.FLEX_CONFIG, flex=1)


async def engine(http, address):
    async with http.get(f"http://{address}/debug/engine") as r:
        return await r.json()


async def idle(http, address):
    return await until(lambda: engine(http, address), f"{address} idle", HANG,
                       test=lambda d: d["running"] == 0 and d["waiting"] == 0 and d["pinned"] == 0)


async def complete(http, url, body, headers=None):
    async with http.post(url + "/v1/completions", json=body, headers=headers or {}) as r:
        return r.status, await r.read(), json.loads(r.headers.get("x-epp-decision") or "{}")


async def answering(http, url):
    await until(lambda: complete(http, url, {"model": "sim-model", "prompt": "warm", "max_tokens": 1}),
                "the stack answers", HANG, test=lambda r: r[0] == 200)


def profile_pick(why, profile="prefill"):
    return ((why.get("profiles") or {}).get(profile) or {}).get("pick") or []


async def test_long_prompt_prefill_then_decode_same_output_as_aggregated(pd):
    body = {"model": "sim-model", "prompt": LONG, "max_tokens": 8, "ignore_eos": True, "seed": 7}
    async with aiohttp.ClientSession() as http:
        await answering(http, pd.url)
        p0, d0 = await engine(http, pd.sims["prefill"][0]), await engine(http, pd.sims["decode"][0])
        status, raw, why = await complete(http, pd.url, body)
        assert status == 200, raw
        assert profile_pick(why) == [pd.prefill], why
        doc = orjson.loads(raw)
        _, agg, _ = await complete(http, pd.aggregated, body)
        assert doc["choices"][0]["text"] == orjson.loads(agg)["choices"][0]["text"]
        p1, d1 = await idle(http, pd.sims["prefill"][0]), await idle(http, pd.sims["decode"][0])
        # both legs ran: the prefill sim served one request and its pinned blocks were pulled once
        assert p1["requests_served"] - p0["requests_served"] == 1
        assert p1["pd"]["released"] - p0["pd"]["released"] == 1
        assert d1["pd"]["pulls"] - d0["pd"]["pulls"] == 1 and d1["pd"]["pull_failures"] == d0["pd"]["pull_failures"]
        print(f"\nKV moved by: {d1['pd']['transport']}")


async def test_short_and_already_cached_prompts_decode_alone(pd):
    async with aiohttp.ClientSession() as http:
        p0 = await engine(http, pd.sims["prefill"][0])
        st, raw, why = await complete(http, pd.url, {"model": "sim-model", "prompt": SHORT, "max_tokens": 4})
        assert st == 200 and profile_pick(why) == [], why
        # the long prompt of the test above is now cached on the decode pod: no prefill hop either
        st, raw, why = await complete(http, pd.url, {"model": "sim-model", "prompt": LONG, "max_tokens": 4})
        assert st == 200 and profile_pick(why) == [], why
        assert orjson.loads(raw)["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        assert (await engine(http, pd.sims["prefill"][0]))["requests_served"] == p0["requests_served"]


async def test_a_clients_prefill_header_is_not_trusted(pd):
    """epp removes a client's x-prefiller-host-port: a short prompt goes to decode alone, whatever the
    client named; and the sidecar itself refuses a target outside the pool (SSRF) with 403."""
    trap = free_port()
    async with aiohttp.ClientSession() as http:
        st, raw, why = await complete(http, pd.url, {"model": "sim-model", "prompt": SHORT, "max_tokens": 2},
                                      {"x-prefiller-host-port": f"127.0.0.1:{trap}"})
        assert st == 200 and profile_pick(why) == [], why
        st, raw, _ = await complete(http, f"http://{pd.decode}", {"model": "sim-model", "prompt": SHORT, "max_tokens": 2},
                                    {"x-prefiller-host-port": f"127.0.0.1:{trap}"})
        assert st == 403, raw


async def test_client_cancel_mid_stream_cancels_both_legs(pd):
    body = {"model": "sim-model", "prompt": "the warranty claims are reviewed by the support team " * 60,
            "max_tokens": 4000, "ignore_eos": True, "stream": True}
    async with aiohttp.ClientSession() as http:
        r = await http.post(pd.url + "/v1/completions", json=body)
        assert r.status == 200 and profile_pick(json.loads(r.headers.get("x-epp-decision") or "{}")) == [pd.prefill]
        await r.content.readline()           # the first token: decoding has started
        r.close()
        d = await idle(http, pd.sims["decode"][0])
        p = await idle(http, pd.sims["prefill"][0])
        assert d["steps"] < 4000 and p["pinned"] == 0


async def test_prefill_pods_down_decode_alone(pd):
    """Last: stops the prefill pods. epp drops them from the candidates once their metrics go stale, and
    a long prompt is then served by the decode pod alone."""
    pool = next(p for name, p in pd.kids.procs if name == "prefill pods")
    pd.kids.stop(pool)
    n = iter(range(10**6))

    def fresh():   # a new long prompt each time, so "already cached" is never the reason
        return {"model": "sim-model", "prompt": f"document {next(n)} about pricing " * 60, "max_tokens": 4}
    async with aiohttp.ClientSession() as http:
        st, raw, why = await until(lambda: complete(http, pd.url, fresh()), "a decision without the stopped prefill pod",
                                   HANG, test=lambda r: profile_pick(r[2]) == [])
        assert st == 200, raw
        assert why.get("reasons"), why        # the decider says why it did not disaggregate


async def test_a_flex_pod_prefills_for_the_decode_pod_through_its_sidecar(pd_flex):
    """config/pd-flex.yaml: a long prompt decodes on the decode-only pod and its prefill leg goes to the
    flex pod through the flex pod's own sidecar; the answer matches an aggregated sim's. (When flex pods
    decode, and which prefill legs they take then, is decided from epp's own counts:
    tests/unit/test_flex_pd.py.)"""
    pd = pd_flex
    body = {"model": "sim-model", "prompt": "1 " + LONG, "max_tokens": 8, "ignore_eos": True, "seed": 7}
    async with aiohttp.ClientSession() as http:
        await answering(http, pd.url)
        f0, d0 = await idle(http, pd.sims["flex"][0]), await idle(http, pd.sims["decode"][0])
        status, raw, why = await complete(http, pd.url, body)
        assert status == 200, raw
        decode = (profile_pick(why, "decode") or [None])[0]
        assert (decode, profile_pick(why)) == (pd.decode, [pd.flex]), why
        _, agg, _ = await complete(http, pd.aggregated, body)
        assert orjson.loads(raw)["choices"][0]["text"] == orjson.loads(agg)["choices"][0]["text"]
        f1, d1 = await idle(http, pd.sims["flex"][0]), await idle(http, pd.sims["decode"][0])
        assert f1["requests_served"] - f0["requests_served"] == 1
        assert f1["pd"]["released"] - f0["pd"]["released"] == 1
        assert d1["pd"]["pulls"] - d0["pd"]["pulls"] == 1
