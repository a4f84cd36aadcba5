"""/metrics parsed with prometheus_client's own parser."""
import asyncio
import contextlib

from prometheus_client.parser import text_string_to_metric_families

from testbed.wait import until

from .conftest import InProcSim


def samples(text):
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


async def metrics(sim):
    return samples((await sim.get("/metrics"))[1])


def one(s, name):
    assert name in s, f"{name} missing"
    assert len(s[name]) == 1, s[name]
    return s[name][0]


async def test_metrics_names_labels_and_values():
    async with InProcSim("--time-scale", "50", "--num-gpu-blocks-override", "100", "--model", "m1") as sim:
        st, text = await sim.get("/metrics")
        assert st == 200
        s = samples(text)
        for g in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
            assert one(s, g).labels == {"model_name": "m1", "engine": "0"} and one(s, g).value == 0
        cc = one(s, "vllm:cache_config_info")
        assert cc.labels["block_size"] == "16" and cc.labels["num_gpu_blocks"] == "100" and cc.value == 1
        prompt = "alpha beta gamma delta " * 10
        for _ in range(2):
            st, r = await sim.post("/v1/completions", {"prompt": prompt, "max_tokens": 5, "ignore_eos": True})
            assert st == 200
        n_prompt = r["usage"]["prompt_tokens"]
        cached = r["usage"]["prompt_tokens_details"]["cached_tokens"]
        s = samples((await sim.get("/metrics"))[1])
        assert one(s, "vllm:prompt_tokens_total").value == 2 * n_prompt
        assert one(s, "vllm:generation_tokens_total").value == 10
        assert one(s, "vllm:prefix_cache_queries_total").value == 2 * n_prompt
        assert one(s, "vllm:prefix_cache_hits_total").value == cached > 0
        rs = one(s, "vllm:request_success_total")
        assert rs.value == 2 and rs.labels["finished_reason"] == "length"
        for h in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                  "vllm:request_queue_time_seconds", "vllm:request_prefill_time_seconds"):
            assert one(s, h + "_count").value == 2
            assert one(s, h + "_sum").value > 0 or h == "vllm:request_queue_time_seconds"
        assert one(s, "vllm:inter_token_latency_seconds_count").value == 8
        # ITL in engine seconds is about one decode step of the 8B profile (~7 ms), whatever the time scale
        itl = one(s, "vllm:inter_token_latency_seconds_sum").value / 8
        assert 0.006 < itl < 0.009, itl
    # gauges move while a request runs: in real time 1400 tokens take ~10 s, long enough to be seen running
    # however late the poll gets to look
    async with InProcSim("--time-scale", "1", "--num-gpu-blocks-override", "100", "--model", "m1") as sim:
        task = asyncio.create_task(sim.post("/v1/completions", {"prompt": prompt, "max_tokens": 1400}))
        s = await until(lambda: metrics(sim), "a running request",
                        test=lambda s: one(s, "vllm:num_requests_running").value == 1)
        assert one(s, "vllm:kv_cache_usage_perc").value > 0
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_lora_requests_info_and_adapters():
    async with InProcSim("--time-scale", "1", "--enable-lora", "--max-loras", "2",
                         "--lora-modules", "sql=/adapters/sql", '{"name": "chat", "path": "/adapters/chat"}') as sim:
        _, m = await sim.get("/v1/models")
        ids = {x["id"]: x for x in m["data"]}
        assert set(ids) == {"sim-model", "sql", "chat"} and ids["sql"]["parent"] == "sim-model"
        st, txt = await sim.post("/v1/load_lora_adapter", {"lora_name": "new", "lora_path": "/a/new"})
        assert st == 200 and "new" in txt
        st, e = await sim.post("/v1/load_lora_adapter", {"lora_name": "new", "lora_path": "/a/new"})
        assert st == 400 and "already" in e["error"]["message"]
        assert (await sim.post("/v1/load_lora_adapter", {"lora_name": "x"}))[0] == 400
        st, _ = await sim.post("/v1/unload_lora_adapter", {"lora_name": "new"})
        assert st == 200
        assert (await sim.post("/v1/unload_lora_adapter", {"lora_name": "new"}))[0] == 404
        assert (await sim.post("/v1/completions", {"model": "new", "prompt": "x"}))[0] == 404
        # 2000 tokens in real time (~14 s): running long enough to be seen however late the poll looks
        task = asyncio.create_task(sim.post("/v1/completions", {"model": "sql", "prompt": "select", "max_tokens": 2000}))
        s = await until(lambda: metrics(sim), "the adapter running",
                        test=lambda s: one(s, "vllm:lora_requests_info").labels["running_lora_adapters"] == "sql")
        info = one(s, "vllm:lora_requests_info")
        assert info.labels == {"max_lora": "2", "running_lora_adapters": "sql", "waiting_lora_adapters": ""}
        assert info.value > 1e9        # a timestamp
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_lora_endpoints_need_enable_lora():
    async with InProcSim() as sim:
        st, e = await sim.post("/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/a"})
        assert st == 400
        s = samples((await sim.get("/metrics"))[1])
        assert "vllm:lora_requests_info" not in s


async def test_slow_and_garbage_metrics():
    async with InProcSim("--metrics-garbage") as sim:
        st, text = await sim.get("/metrics")
        assert st == 200
        try:
            list(text_string_to_metric_families(text))
            parsed = True
        except Exception:
            parsed = False
        assert not parsed
    async with InProcSim("--metrics-delay-s", "0.3") as sim:
        t0 = asyncio.get_running_loop().time()
        st, _ = await sim.get("/metrics")
        assert st == 200 and asyncio.get_running_loop().time() - t0 >= 0.3
