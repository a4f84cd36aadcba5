"""P/D with a flex pod (role prefill-decode) through the real Envoy, epp running config/pd-flex.yaml: a long
prompt decodes on the decode-only pod and its prefill leg goes to the flex pod through the flex pod's own
sidecar, and the answer matches an aggregated sim's. (When the flex pods decode, and which prefill legs
they take then, is decided from epp's own counts: tests/unit/test_flex_pd.py.) The pods are the local stack's (testbed.pd, as hack/stack.sh --topology pd --flex 1)."""
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


@pytest.fixture(scope="module")
def pd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pd-flex-envoy")
    kids = Children(str(tmp))
    efile = str(tmp / "endpoints.yaml")
    try:
        pods = pd_pods.start(kids, 0, 1, efile, ["--time-scale", "5", "--seed", "1"], flex=1)
        agg_port = free_port()
        agg = kids.start("aggregated", [PY, "-m", "vllm_sim", "--port", str(agg_port), "--time-scale", "20", "--seed", "1"])
        wait_port(agg_port, HANG, agg, "aggregated sim")
        epp = Epp(str(tmp), efile, "--config-file", pd_pods.FLEX_CONFIG, "--decision-header",
                  "--refresh-metrics-interval", "50ms")
        envoy = Envoy(str(tmp), [MODE], epp.ports["grpc"])

        class PD:
            pass
        s = PD()
        s.flex, s.decode = pods["flex"][0], pods["decode"][0]
        s.sims = pods["sims"]
        s.url = f"http://127.0.0.1:{envoy.ports[MODE]}"
        s.aggregated = f"http://127.0.0.1:{agg_port}"
        yield s
        envoy.stop()
        epp.stop()
    finally:
        kids.stop_all()


async def engine(http, address):
    async with http.get(f"http://{address}/debug/engine") as r:
        return await r.json()


async def idle(http, address):
    return await until(lambda: engine(http, address), f"{address} idle", HANG,
                       test=lambda d: d["running"] == 0 and d["waiting"] == 0 and d["pinned"] == 0)


async def complete(http, url, body):
    async with http.post(url + "/v1/completions", json=body) as r:
        return r.status, await r.read(), json.loads(r.headers.get("x-epp-decision") or "{}")


def picks(why):
    profiles = why.get("profiles") or {}
    return (((profiles.get("decode") or {}).get("pick") or [None])[0],
            ((profiles.get("prefill") or {}).get("pick") or [None])[0])


async def test_the_flex_pod_prefills_for_the_decode_pod_through_its_sidecar(pd):
    body = {"model": "sim-model", "prompt": "1 " + LONG, "max_tokens": 8, "ignore_eos": True, "seed": 7}
    async with aiohttp.ClientSession() as http:
        await until(lambda: complete(http, pd.url, {"model": "sim-model", "prompt": "warm", "max_tokens": 1}),
                    "the stack answers", HANG, test=lambda r: r[0] == 200)
        f0, d0 = await idle(http, pd.sims["flex"][0]), await idle(http, pd.sims["decode"][0])
        status, raw, why = await complete(http, pd.url, body)
        assert status == 200, raw
        assert picks(why) == (pd.decode, pd.flex), why
        _, agg, _ = await complete(http, pd.aggregated, body)
        assert orjson.loads(raw)["choices"][0]["text"] == orjson.loads(agg)["choices"][0]["text"]
        f1, d1 = await idle(http, pd.sims["flex"][0]), await idle(http, pd.sims["decode"][0])
        assert f1["requests_served"] - f0["requests_served"] == 1
        assert f1["pd"]["released"] - f0["pd"]["released"] == 1
        assert d1["pd"]["pulls"] - d0["pd"]["pulls"] == 1
