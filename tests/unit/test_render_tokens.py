"""token-producer's vllm backend: vLLM's renderer API called on loopback, with its cache, coalescing,
timeouts and breaker; what it sends and how a failure becomes a fallback."""
import asyncio
import json

import pytest
from aiohttp import web

from epp.datalayer import render_client
from epp.datalayer.render_client import RenderClient, RenderError
from epp.scheduling.plugins.token_producer import TokenProducer
from epp.scheduling.types import LLMRequest


class FakeRenderer:
    """vLLM's shapes: completions -> [GenerateRequest], chat -> GenerateRequest."""

    def __init__(self):
        self.bodies, self.delay, self.status, self.raw = [], 0.0, 200, None
        self.gate: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append((request.path, body))
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        if self.raw is not None:
            return web.Response(body=self.raw, status=self.status)
        text = body.get("prompt") or json.dumps(body.get("messages"))
        doc = {"request_id": "x", "token_ids": [len(w) for w in text.split()], "model": body["model"]}
        return web.json_response(doc if request.path.startswith("/v1/chat") else [doc], status=self.status)


@pytest.fixture
async def renderer():
    fake = FakeRenderer()
    app = web.Application()
    app.router.add_post("/v1/completions/render", fake.handle)
    app.router.add_post("/v1/chat/completions/render", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    yield fake
    await runner.cleanup()


def request(api="completions", body=None, rid="r1"):
    body = body or {"model": "client-name", "prompt": "aa bbb c", "max_tokens": 9, "temperature": 0.5}
    return LLMRequest(request_id=rid, model="client-name", target_model="served", api=api, prompt=b"aa bbb c",
                      headers={}, body=body)


async def tokens_of(tp, req):
    w = tp.prepare(req)
    if w is not None:
        await w
    return tp.tokens({}, req)


async def test_completion_prompt_is_rendered_once_then_cached(renderer):
    tp = TokenProducer(modelName="base-model", vllm={"url": renderer.url})
    assert list(await tokens_of(tp, request())) == [2, 3, 1]
    path, sent = renderer.bodies[0]
    # only the prompt part goes, with the configured base model name: sampling fields would make
    # equal prompts look different to the cache
    assert path == "/v1/completions/render" and sent == {"model": "base-model", "prompt": "aa bbb c"}
    other = request(body={"model": "client-name", "prompt": "aa bbb c", "max_tokens": 1}, rid="r2")
    assert tp.prepare(other) is None and list(tp.tokens({}, other)) == [2, 3, 1]   # cache: no await
    assert len(renderer.bodies) == 1
    with pytest.raises(ValueError, match="'modelName' must be specified"):   # as upstream
        TokenProducer(vllm={"url": renderer.url})


async def test_chat_sends_messages_and_template_fields(renderer):
    tp = TokenProducer(modelName="m", vllm={"url": renderer.url})
    msgs = [{"role": "user", "content": "hi there"}]
    body = {"model": "m", "messages": msgs, "tools": [{"type": "function"}], "chat_template_kwargs": {"x": 1},
            "max_tokens": 5, "stream": True}
    assert await tokens_of(tp, request("chat", body)) is not None
    path, sent = renderer.bodies[0]
    assert path == "/v1/chat/completions/render"
    assert sent == {"model": "m", "messages": msgs, "tools": [{"type": "function"}], "chat_template_kwargs": {"x": 1}}


async def test_token_id_prompts_need_no_round_trip(renderer):
    tp = TokenProducer(modelName="m", vllm={"url": renderer.url})
    r = request(body={"model": "m", "prompt": [5, 6, 7]})
    assert tp.prepare(r) is None and tp.tokens({}, r) == [5, 6, 7] and not renderer.bodies


async def test_unsupported_api_gets_no_tokens(renderer):
    tp = TokenProducer(modelName="m", vllm={"url": renderer.url})
    r = request("responses", {"model": "m", "input": "x"})
    assert tp.prepare(r) is None and tp.tokens({}, r) is None and not renderer.bodies


async def test_a_burst_of_one_prompt_is_rendered_once(renderer):
    renderer.gate = asyncio.Event()
    tp = TokenProducer(modelName="m", vllm={"url": renderer.url})
    reqs = [request(rid=f"r{i}") for i in range(5)]
    waits = [tp.prepare(r) for r in reqs]
    assert all(w is not None for w in waits)
    tasks = [asyncio.ensure_future(w) for w in waits]
    await asyncio.sleep(0.05)
    renderer.gate.set()
    await asyncio.gather(*tasks)
    assert len(renderer.bodies) == 1 and all(list(tp.tokens({}, r)) == [2, 3, 1] for r in reqs)


@pytest.mark.parametrize("case,reason", [("status", "http_status"), ("garbage", "bad_response"),
                                         ("no_ids", "bad_response"), ("slow", "timeout")])
async def test_failures_fall_back_and_are_counted(renderer, case, reason):
    if case == "status":
        renderer.status, renderer.raw = 400, b'{"error": "bad"}'
    elif case == "garbage":
        renderer.raw = b"<html>"
    elif case == "no_ids":
        renderer.raw = b'[{"request_id": "x"}]'
    else:
        renderer.delay = 1.0
    tp = TokenProducer(modelName="m", vllm={"url": renderer.url, "timeout": "100ms"})
    before = render_total(reason)
    r = request()
    assert await tokens_of(tp, r) is None and tp.failures == 1
    assert render_total(reason) == before + 1
    assert tp.token_count({}, r) == (len(r.prompt) + 3) // 4     # the byte estimate stands in


def render_total(result: str) -> float:
    from prometheus_client import REGISTRY
    return REGISTRY.get_sample_value("epp_token_producer_render_total", {"result": result}) or 0.0


async def test_breaker_skips_a_dead_renderer_then_probes_it(renderer, monkeypatch):
    c = RenderClient(renderer.url, 0.5, 1000, cooldown=0.2)
    renderer.status, renderer.raw = 500, b"down"
    for i in range(render_client.BREAKER_FAILURES):
        with pytest.raises(RenderError, match="http_status"):
            await c.render("/v1/completions/render", b'{"prompt": "a"}', b"k%d" % i)
    assert not c.available()
    with pytest.raises(RenderError, match="breaker_open"):
        await c.render("/v1/completions/render", b'{"prompt": "a"}', b"other")
    calls = c.calls
    await asyncio.sleep(0.25)
    assert c.available()
    renderer.status, renderer.raw = 200, None
    ids = await c.render("/v1/completions/render", b'{"model": "m", "prompt": "a bb"}', b"probe")
    assert list(ids) == [1, 2] and c.calls == calls + 1 and c.available()
    await c.close()


async def test_cache_is_bounded_in_tokens(renderer):
    c = RenderClient(renderer.url, 1.0, cache_tokens=5)
    for i, prompt in enumerate(["a b c", "d e", "f g h"]):
        await c.render("/v1/completions/render", json.dumps({"model": "m", "prompt": prompt}).encode(), b"%d" % i)
    assert c.cached(b"0") is None and c.cached(b"1") is not None and c.cached(b"2") is not None
    await c.close()
