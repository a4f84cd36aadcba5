"""The precise prefix producer fed by a real vllm_sim process's KV events: its matches are the sim's
real cache, and two producers (two EPP replicas) fed the same events score identically."""
import asyncio
import json
import sys

import aiohttp
import zmq
import zmq.asyncio

from epp.datalayer.endpoint import Endpoint, Metrics, now
from epp.datalayer.store import EndpointStore
from epp.scheduling.plugins.precise_prefix_cache_producer import PrecisePrefixCacheProducer
from epp.scheduling.plugins.token_producer import TokenProducer
from epp.scheduling.types import CycleState, LLMRequest
from testbed.ports import free_port
from testbed.wait import until

from .stack import wait_healthy

ROOT = __file__.rsplit("/tests/", 1)[0]
HANG = 60.0


def producer(port: int, tokens: TokenProducer, name: str) -> PrecisePrefixCacheProducer:
    p = PrecisePrefixCacheProducer(name=name, kvEventsConfig={"discoverPods": True,
                                                              "podDiscoveryConfig": {"socketPort": port}})
    p.bind({"t": tokens})
    return p


async def test_index_equals_the_sims_cache_and_replicas_agree():
    from vllm_sim.engine.kv_cache import block_key
    from vllm_sim.tokenizer import DEFAULT_DIR
    tokens = TokenProducer(local={"path": DEFAULT_DIR})
    ctx = zmq.asyncio.Context()
    # the sim connects its PUB to our SUB (a non-wildcard endpoint, as vLLM does); a fan-out PUB bound on
    # loopback passes every frame on to the two "replicas", which connect to it like to a pod's publisher
    sink_port, fan_port, sim_port = free_port(), free_port(), free_port()
    sub = ctx.socket(zmq.SUB)
    sub.bind(f"tcp://127.0.0.1:{sink_port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    fan = ctx.socket(zmq.PUB)
    fan.bind(f"tcp://127.0.0.1:{fan_port}")
    addr = f"127.0.0.1:{sim_port}"
    store = EndpointStore()
    ep = Endpoint(name="sim", address=addr)
    ep.metrics = Metrics(updated=now())
    store.replace([ep])
    a, b = producer(fan_port, tokens, "replica-a"), producer(fan_port, tokens, "replica-b")
    tasks = [asyncio.create_task(a.run_background(store)), asyncio.create_task(b.run_background(store))]
    forwarded = 0

    async def forward():
        nonlocal forwarded
        while True:
            frames = await sub.recv_multipart()
            await fan.send_multipart(frames)
            forwarded += 1
    fwd = asyncio.create_task(forward())
    cfg = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://127.0.0.1:{sink_port}",
           "topic": f"kv@{addr}@m"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vllm_sim", "--model", "m", "--port", str(sim_port), "--time-scale", "100",
        "--kv-events-config", json.dumps(cfg), cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    url = f"http://{addr}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, url, proc, HANG)

            async def complete(prompt):
                async with http.post(url + "/v1/completions",
                                     json={"model": "m", "prompt": prompt, "max_tokens": 2, "ignore_eos": True}) as r:
                    assert r.status == 200, await r.text()

            # slow joiners on both hops: serve distinct prompts until both replicas have seen events
            i = 0
            while not (len(a.index) and len(b.index)):
                await complete(f"warm up request {i} " * 8)
                i += 1
                await asyncio.sleep(0.05)
                assert i < 400, "no events reached the replicas"
            a.index.clear_pod(addr)
            b.index.clear_pod(addr)
            async with http.post(url + "/reset_prefix_cache"):
                pass
            await asyncio.sleep(0.2)

            shared = "You are a helpful assistant for the billing team. Answer briefly and precisely. " * 8
            prompts = [shared + f"Customer {n} asks about invoice {n * 7} and the refund policy. " * 3 for n in range(4)]
            for p in prompts:
                await complete(p)

            async def gpu_keys():
                async with http.get(url + "/debug/kv_cache") as r:
                    return set((await r.json())["tiers"]["GPU"])
            sim_cache = await gpu_keys()

            def leading_blocks(prompt: str) -> int:
                ids = tokens.tokenizer.encode(prompt, add_special_tokens=False).ids
                parent, n = None, 0
                for k in range(len(ids) // 16):
                    parent = block_key(parent, ids[k * 16:(k + 1) * 16])
                    if parent not in sim_cache:
                        break
                    n += 1
                return n

            probes = prompts + [shared + "A new customer with a new question. " * 5, "nothing shared at all " * 30]
            want = [leading_blocks(p) for p in probes]
            assert want[0] > 10 and want[-1] == 0 and want[-2] >= len(shared) // 16 // 5   # the shared prefix is cached

            def scores(prod):
                out = []
                for p in probes:
                    r = LLMRequest("r", "m", "m", "completions", p.encode(), body={"prompt": p})
                    info = prod.match_info(CycleState(), r)
                    out.append((info.blocks or {}).get(addr, 0))
                return out
            await until(lambda: scores(a) == want, f"replica a matches the sim's cache {want}")
            await until(lambda: scores(b) == want, "replica b matches the sim's cache")
            assert scores(a) == scores(b)
            assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]  # both still consuming
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        fwd.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(fwd, *tasks, return_exceptions=True)
        sub.close(0)
        fan.close(0)
        ctx.term()


async def test_render_backend_tokens_equal_the_local_tokenizer_and_the_sims():
    """The two real-token backends agree with each other and with what the model server counts, for
    a chat (template rendered) and a completion (special-token prefix)."""
    from vllm_sim.tokenizer import DEFAULT_DIR
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vllm_sim", "--model", "m", "--port", str(port), "--time-scale", "100",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    render = TokenProducer(modelName="m", vllm={"url": url})
    local = TokenProducer(local={"path": DEFAULT_DIR})
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, url, proc, HANG)
            chat = {"model": "m", "messages": [{"role": "system", "content": "You help with invoices."},
                                               {"role": "user", "content": "Where is invoice 42, ünïcode 日本?"}]}
            completion = {"model": "m", "prompt": "Routing keeps a prompt's prefix where its cache is. " * 20}
            for api, body in (("chat", chat), ("completions", completion)):
                seen = []
                for tp in (render, local):
                    req = LLMRequest(request_id=api, model="m", target_model="m", api=api, prompt=b"", headers={},
                                     body=body)
                    w = tp.prepare(req) if tp.prepares else None
                    if w is not None:
                        await w
                    seen.append(list(tp.tokens(CycleState(), req)))
                path = "/v1/chat/completions" if api == "chat" else "/v1/completions"
                async with http.post(url + path, json={**body, "max_tokens": 1}) as r:
                    served = (await r.json())["usage"]["prompt_tokens"]
                assert seen[0] == seen[1] and len(seen[0]) == served, (api, len(seen[0]), len(seen[1]), served)
    finally:
        await render.render.close()
        proc.terminate()
        await proc.wait()
