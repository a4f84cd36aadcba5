"""vllm_sim: a simulated vLLM that speaks vLLM's real interfaces, for tests, demos and benchmarks without GPUs.

Start one:   vllm-sim --port 8000 --model sim-model --time-scale 1        (or python -m vllm_sim)
A pool:      python -m vllm_sim.pool --count 4 --base-port 8200 --roles prefill,decode \\
                 --endpoints-file out/endpoints.yaml -- --time-scale 1

Layout
    cli.py           flags (vLLM's names where vLLM has one)
    server.py        aiohttp app; an asyncio task drives the engine step by step
    openai_api.py    request validation, response and SSE chunk bodies;  errors.py  vLLM's error shape
    engine/          pure, synchronous engine: kv_cache.py (blocks, prefix cache, CPU tier, KV events),
                     scheduler.py (vLLM V1 scheduling), request.py, clock.py
    profiles.py      step-time model per model/GPU, with its arithmetic
    metrics.py       vLLM's Prometheus metrics on a per-server registry
    kv_events.py     ZMQ publisher + replay socket in vLLM's wire format
    pd.py            NixlConnector contract (prefill pins blocks, decode pulls);  nixl_transport.py  real NIXL
    lora.py, failures.py, pool.py, tokenizer/

Time: the engine runs on engine seconds; `--time-scale S` makes S engine seconds pass per wall second.
Latencies in /metrics and usage are in engine seconds (what vLLM would measure on the modelled GPU). While
the engine is busy its clock advances by modelled step times, so Python overhead at large S slows the
sim down rather than distorting its latencies.

Debug endpoints (not in vLLM): GET /debug/kv_cache (cached block keys per tier), GET /debug/engine (queue
sizes, steps, preemptions, P/D transfer counters), POST /reset_prefix_cache (vLLM has it too).
"""
