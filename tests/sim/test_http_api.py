"""The OpenAI-compatible HTTP surface over real loopback sockets."""
import asyncio

import aiohttp
import orjson

from vllm_sim import tokenizer

from .conftest import InProcSim

FAST = ("--time-scale", "50", "--max-model-len", "256", "--num-gpu-blocks-override", "64")


async def sse(sim, path, body):
    events = []
    async with sim.http.post(sim.url + path, json=body) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = (await r.read()).decode()
    for block in raw.split("\n\n"):
        if block:
            assert block.startswith("data: "), block
            events.append(block[6:])
    return events


async def test_completion_non_streaming_usage_and_cache_hit():
    async with InProcSim(*FAST) as sim:
        prompt = "the model server sends every request through the gateway " * 4
        n_prompt = len(tokenizer.load().encode(prompt))
        st, body = await sim.post("/v1/completions", {"model": "sim-model", "prompt": prompt, "max_tokens": 7,
                                                      "ignore_eos": True, "router_hint": {"x": 1}})
        assert st == 200, body
        assert body["object"] == "text_completion" and body["model"] == "sim-model"
        ch = body["choices"][0]
        assert ch["finish_reason"] == "length" and isinstance(ch["text"], str) and ch["text"]
        u = body["usage"]
        assert u["prompt_tokens"] == n_prompt and u["completion_tokens"] == 7 and u["total_tokens"] == n_prompt + 7
        assert u["prompt_tokens_details"]["cached_tokens"] == 0
        # the same prompt again hits every full block of the prompt (but never the last token)
        st, body = await sim.post("/v1/completions", {"prompt": prompt, "max_tokens": 2})
        assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == (n_prompt - 1) // 16 * 16 > 0


async def test_streaming_completion_and_chat_with_usage():
    async with InProcSim(*FAST) as sim:
        ev = await sim_events(sim, "/v1/completions", {"prompt": "hello there", "max_tokens": 4, "stream": True,
                                                      "stream_options": {"include_usage": True}})
        assert ev[-1] == "[DONE]"
        chunks = [orjson.loads(e) for e in ev[:-1]]
        text_chunks = [c for c in chunks if c["choices"]]
        assert len(text_chunks) == 4
        assert [c["choices"][0]["finish_reason"] for c in text_chunks] == [None, None, None, "length"]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
        ev = await sim_events(sim, "/v1/chat/completions", {
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "max_completion_tokens": 3, "stream": True})
        chunks = [orjson.loads(e) for e in ev[:-1]]
        assert ev[-1] == "[DONE]"
        assert chunks[0]["object"] == "chat.completion.chunk"
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert sum(1 for c in chunks if c["choices"][0]["delta"].get("content")) == 3
        assert all("usage" not in c for c in chunks)        # no include_usage: no usage field


async def test_a_chat_stream_sends_no_body_before_its_first_token():
    """vLLM writes the stream's headers at once but its first chunk (the role) only with the engine's first
    output, so a router that times the first chunk sees the TTFT. One sequence at a time: a chat stream sent
    behind a running request gets its headers, and no body byte until that request is done."""
    async with InProcSim("--time-scale", "2", "--max-num-seqs", "1") as sim:
        loop = asyncio.get_running_loop()
        ahead = asyncio.ensure_future(sim.post("/v1/completions", {"prompt": "first in line", "max_tokens": 200,
                                                                   "ignore_eos": True}))
        ahead_done = None

        def mark(_):
            nonlocal ahead_done
            ahead_done = loop.time()
        ahead.add_done_callback(mark)
        while (await sim.get("/debug/engine"))[1]["running"] == 0 and not ahead.done():
            await asyncio.sleep(0.01)
        async with sim.http.post(sim.url + "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "then me"}], "max_tokens": 2, "stream": True}) as r:
            assert r.status == 200 and not ahead.done()      # the headers came while the engine was busy
            first = await r.content.readany()
            t_first = loop.time()
            rest = await r.read()
        assert (await ahead)[0] == 200
        assert ahead_done is not None and t_first >= ahead_done
        chunks = [orjson.loads(b[6:]) for b in (first + rest).split(b"\n\n") if b and b != b"data: [DONE]"]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert sum(1 for c in chunks if c["choices"][0]["delta"].get("content")) == 2


async def sim_events(sim, path, body):
    return await sse(sim, path, body)


async def test_chat_non_streaming_counts_template_tokens():
    async with InProcSim(*FAST) as sim:
        msgs = [{"role": "user", "content": [{"type": "text", "text": "Explain prefix caching"}]}]
        tok = tokenizer.load()
        expect = len(tok.encode(tok.apply_chat_template(msgs)))
        st, body = await sim.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 5})
        assert st == 200
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["usage"]["prompt_tokens"] == expect


async def test_ignore_eos_seed_and_echo():
    async with InProcSim(*FAST, "--eos-prob", "0.5") as sim:
        a = (await sim.post("/v1/completions", {"prompt": "x y z", "max_tokens": 20, "ignore_eos": True,
                                                "seed": 3}))[1]
        b = (await sim.post("/v1/completions", {"prompt": "x y z", "max_tokens": 20, "ignore_eos": True,
                                                "seed": 3}))[1]
        assert a["usage"]["completion_tokens"] == 20
        assert a["choices"][0]["text"] == b["choices"][0]["text"]        # same seed, same output
        stops = [(await sim.post("/v1/completions", {"prompt": "x y z", "max_tokens": 50, "seed": s}))[1]
                 for s in range(5)]
        assert any(r["choices"][0]["finish_reason"] == "stop" for r in stops)    # EOS can end a request early
        assert all(r["usage"]["completion_tokens"] <= 50 for r in stops)
        e = (await sim.post("/v1/completions", {"prompt": "echo me", "max_tokens": 2, "echo": True}))[1]
        assert e["choices"][0]["text"].startswith("echo me")


async def test_error_cases():
    async with InProcSim(*FAST) as sim:
        async def err(path, body=None, raw=None, status=400):
            st, b = await sim.post(path, body, raw=raw)
            assert st == status, (body, b)
            assert set(b["error"]) >= {"message", "type", "code"} and b["error"]["code"] == status
            return b["error"]

        await err("/v1/completions", raw=b"{not json")
        await err("/v1/completions", raw=b"[1, 2]")
        await err("/v1/completions", {"max_tokens": 3})                          # no prompt
        await err("/v1/completions", {"prompt": 5})
        await err("/v1/completions", {"prompt": "a", "max_tokens": "ten"})
        await err("/v1/completions", {"prompt": "a", "max_tokens": 0})
        await err("/v1/completions", {"prompt": "a", "n": 2})
        await err("/v1/completions", {"prompt": "a", "temperature": -1})
        await err("/v1/completions", {"prompt": "a", "stream_options": {"include_usage": True}})
        await err("/v1/completions", {"prompt": ["a", "b"]})
        await err("/v1/completions", {"prompt": [1, 99999999]})
        await err("/v1/completions", {"prompt": ""})
        await err("/v1/chat/completions", {"messages": []})
        await err("/v1/chat/completions", {"messages": [{"content": "no role"}]})
        e = await err("/v1/completions", {"model": "nope", "prompt": "a"}, status=404)
        assert e["type"] == "NotFoundError" and "nope" in e["message"]
        e = await err("/v1/completions", {"prompt": "word " * 300})                # over max_model_len 256
        assert "maximum context length is 256" in e["message"]
        e = await err("/v1/completions", {"prompt": "word " * 10, "max_tokens": 250})  # prompt + output too long
        assert "in the completion" in e["message"]
        # none of these reached the engine
        _, d = await sim.get("/debug/engine")
        assert d["steps"] == 0


async def test_models_health_tokenize_detokenize_render():
    async with InProcSim(*FAST, "--served-model-name", "alpha", "beta") as sim:
        st, m = await sim.get("/v1/models")
        assert st == 200 and [x["id"] for x in m["data"]] == ["alpha", "beta"]
        assert (await sim.get("/health"))[0] == 200
        st, t = await sim.post("/tokenize", {"model": "beta", "prompt": "hello world"})
        tok = tokenizer.load()
        assert t["tokens"] == tok.encode("hello world") and t["count"] == len(t["tokens"])
        assert t["max_model_len"] == 256
        st, d = await sim.post("/detokenize", {"model": "alpha", "tokens": t["tokens"]})
        assert d["prompt"] == "hello world"
        msgs = [{"role": "user", "content": "hi"}]
        st, t2 = await sim.post("/tokenize", {"messages": msgs})
        st, r = await sim.post("/v1/chat/completions/render", {"model": "alpha", "messages": msgs})
        # vLLM's renderer API: chat answers one GenerateRequest, completions a list of them
        assert st == 200 and r["token_ids"] == t2["tokens"] == tok.encode(tok.apply_chat_template(msgs))
        assert r["model"] == "alpha" and r["request_id"].startswith("chatcmpl-") and "sampling_params" in r
        st, r = await sim.post("/v1/completions/render", {"prompt": "hello world", "max_tokens": 3})
        assert isinstance(r, list) and len(r) == 1 and r[0]["token_ids"] == tok.encode("hello world")
        assert r[0]["sampling_params"]["max_tokens"] == 3 and r[0]["request_id"].startswith("cmpl-")
        st, e = await sim.post("/v1/completions/render", {"model": "gamma", "prompt": "x"})
        assert st == 404
        assert (await sim.post("/detokenize", {"tokens": "abc"}))[0] == 400


async def test_client_disconnect_frees_sequence_and_blocks():
    # 2000 tokens at ~7 ms each in real time (~14 s): the client leaves long before the end. Event-driven:
    # the client disconnects once its request is running, whatever the host's load.
    async with InProcSim("--time-scale", "1", "--num-gpu-blocks-override", "256") as sim:
        async with aiohttp.ClientSession() as s:
            r = await s.post(sim.url + "/v1/completions",
                             json={"prompt": "long story " * 20, "max_tokens": 2000, "stream": True})
            assert r.status == 200
            await r.content.readline()          # the first chunk: the request is running
            r.close()                           # drop the connection mid-stream
        d = await sim.wait_idle()
        assert 0 < d["steps"] < 2000            # aborted, not run to the end
        _, kv = await sim.get("/debug/kv_cache")
        assert kv["usage"] == 0.0          # every block back in the free queue (cached content may remain)
        # non-streaming too: the client gives up while its request runs
        steps = d["steps"]
        async with aiohttp.ClientSession() as s:
            async def call():
                async with s.post(sim.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2000}) as r:
                    await r.read()
            task = asyncio.create_task(call())
            await sim.engine_when(lambda d: d["running"] == 1, "the request running")
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        d = await sim.wait_idle()
        assert d["steps"] - steps < 2000
        assert (await sim.get("/debug/kv_cache"))[1]["usage"] == 0.0


async def test_concurrent_requests_batch_together():
    async with InProcSim("--time-scale", "20") as sim:
        bodies = [{"prompt": f"request number {i}", "max_tokens": 30, "ignore_eos": True} for i in range(6)]
        res = await asyncio.gather(*(sim.post("/v1/completions", b) for b in bodies))
        assert all(st == 200 and r["usage"]["completion_tokens"] == 30 for st, r in res)
        _, d = await sim.get("/debug/engine")
        assert d["steps"] < 6 * 31            # continuous batching: decodes shared steps


async def test_prefix_caching_can_be_disabled_and_tiny_caches_cap_max_model_len():
    async with InProcSim("--time-scale", "50", "--no-enable-prefix-caching", "--num-gpu-blocks-override", "8") as sim:
        prompt = "one two three four five six seven eight nine ten " * 4
        for _ in range(2):
            st, r = await sim.post("/v1/completions", {"prompt": prompt, "max_tokens": 2})
            assert st == 200 and r["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        # 8 blocks x 16 tokens: a longer sequence could never be scheduled, so it is refused up front
        st, e = await sim.post("/v1/completions", {"prompt": "word " * 200})
        assert st == 400 and "maximum context length is 128" in e["error"]["message"]
        st, t = await sim.post("/tokenize", {"prompt": "x"})
        assert t["max_model_len"] == 128


async def test_time_scale_maps_engine_time_onto_wall_time():
    async with InProcSim("--time-scale", "10") as sim:
        loop = asyncio.get_running_loop()
        t_a = loop.time()
        d0 = (await sim.get("/debug/engine"))[1]
        t_b = loop.time()
        st, r = await sim.post("/v1/completions", {"prompt": "tick tock", "max_tokens": 200, "ignore_eos": True})
        t_c = loop.time()
        d1 = (await sim.get("/debug/engine"))[1]
        t_d = loop.time()
        assert st == 200 and d1["time_scale"] == 10
        # the engine clock runs at ten times the wall clock (the same monotonic clock, so this is exact: the
        # two readings fall between the brackets, however busy the host)
        assert 10 * (t_c - t_b) - 1e-6 <= d1["engine_time"] - d0["engine_time"] <= 10 * (t_d - t_a) + 1e-6
        # the 199 gaps between tokens are decode steps of ~7 ms engine time: ~1.4 engine seconds
        s = (await sim.get("/metrics"))[1]
        itl_sum = float(next(line.split()[-1] for line in s.splitlines()
                             if line.startswith("vllm:inter_token_latency_seconds_sum")))
        assert 1.3 < itl_sum < 1.5, itl_sum
        # never faster than the model: the last token cannot leave before its engine time on the scaled clock
        assert t_c - t_b >= itl_sum / 10
