"""The simulated vLLM server: aiohttp on one asyncio loop, driving the engine from a background task."""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
import uuid

import orjson
from aiohttp import web

from . import engine_setup, openai_api
from .engine import Request, ScaledClock
from .errors import APIError, bad_request, model_not_found
from .failures import FailureInjector
from .kv_events import KVEventPublisher, parse_kv_events_config
from .lora import LoraRegistry, parse_modules
from .metrics import SimMetrics
from .pd import PDConnector, parse_kv_transfer_config
from . import profiles
from . import sidecar as sidecar_mod
from . import tokenizer as tokmod

log = logging.getLogger("vllm_sim")
JSON = "application/json"


def _json(obj, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), content_type=JSON)


class SimServer:
    def __init__(self, args):
        self.args = args
        self.served_names = list(args.served_model_name or [args.model])
        self.model_name = self.served_names[0]
        self.tok = tokmod.load(args.tokenizer)
        self.lora = LoraRegistry(args.enable_lora, parse_modules(args.lora_modules))
        self.engine, self.profile = engine_setup.build(args, self.tok.word_token_ids())
        self.clock = ScaledClock(args.time_scale)
        self.metrics = SimMetrics(self.engine, self.model_name, lora_enabled=args.enable_lora,
                                  max_loras=args.max_loras)
        self.failures = FailureInjector(args.failure_rate, args.failure_types, args.seed)
        self.engine_id = args.engine_id or str(uuid.uuid4())
        kv_cfg = parse_kv_events_config(args.kv_events_config)
        self.kv_events = KVEventPublisher(kv_cfg, args.data_parallel_rank) if kv_cfg else None
        if self.kv_events:
            self.kv_events.lora_name_of = self.lora.name_of
        pd_cfg = parse_kv_transfer_config(args.kv_transfer_config)
        self.pd = PDConnector(self, pd_cfg) if pd_cfg else None
        self.sidecar = sidecar_mod.Sidecar() if args.pd_sidecar else None
        self.waiters: dict[str, asyncio.Queue] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._busy, self._t = False, 0.0
        self._runner: web.AppRunner | None = None
        self.requests_served = 0
        self.render_calls = 0           # renderer API calls (a tokenizing router calls it per request)
        self._decode_cache: dict[int, str] = {}
        self.app = self._build_app()

    # ---- lifecycle -------------------------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_post("/v1/completions", functools.partial(self._generate, chat=False))
        r.add_post("/v1/chat/completions", functools.partial(self._generate, chat=True))
        r.add_post("/v1/completions/render", functools.partial(self._render, chat=False))
        r.add_post("/v1/chat/completions/render", functools.partial(self._render, chat=True))
        r.add_get("/v1/models", self._models)
        r.add_get("/health", self._health)
        r.add_get("/ping", self._health)
        r.add_get("/version", self._version)
        r.add_get("/metrics", self._metrics)
        r.add_post("/tokenize", self._tokenize)
        r.add_post("/detokenize", self._detokenize)
        r.add_post("/v1/load_lora_adapter", self._load_lora)
        r.add_post("/v1/unload_lora_adapter", self._unload_lora)
        r.add_post("/reset_prefix_cache", self._reset_prefix_cache)
        r.add_get("/debug/kv_cache", self._debug_kv)
        r.add_get("/debug/engine", self._debug_engine)
        if self.pd:
            self.pd.add_routes(r)
        return app

    async def start(self) -> None:
        if self.kv_events:
            await self.kv_events.start()
        if self.pd:
            await self.pd.start()
        if self.sidecar:
            await self.sidecar.start()
        self._loop_task = asyncio.create_task(self._engine_loop())
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.args.host, self.args.port, reuse_address=True)
        await site.start()
        if self.args.exit_after_s:
            asyncio.get_running_loop().call_later(self.args.exit_after_s, self._abrupt_exit)

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
        if self._runner:
            await self._runner.cleanup()
        if self.pd:
            await self.pd.stop()
        if self.sidecar:
            await self.sidecar.stop()
        if self.kv_events:
            self.kv_events.close()

    def _abrupt_exit(self) -> None:
        log.warning("abrupt exit (failure injection)")
        os._exit(17)

    # ---- the engine loop ----------------------------------------------------------------------------
    def now(self) -> float:
        """Engine time: the scaled wall clock, held back to the end of the step in flight when the loop runs
        late (so events are never stamped after steps that have not yet happened)."""
        return min(self.clock.now(), self._t) if self._busy else self.clock.now()

    def wake(self) -> None:
        self._wake.set()

    async def _engine_loop(self) -> None:
        e, clock = self.engine, self.clock
        try:
            while True:
                # Engine time advances by modelled step durations while busy, so latencies match the model
                # even when this loop's own overhead (amplified by a large time scale) makes it run late.
                t = self._t if self._busy else clock.now()
                out = e.step(t)
                for req in e.take_pending_loads():
                    self.pd.start_pull(req)
                self._publish_events(t)
                if out is None:
                    self._busy = False
                    self._wake.clear()
                    wake = e.next_wakeup()
                    timeout = None if wake is None else clock.wall_delay(wake - clock.now())
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    except asyncio.TimeoutError:
                        pass
                    continue
                self._busy, self._t = True, out.end
                delay = clock.wall_delay(out.end - clock.now())
                await asyncio.sleep(delay)   # sleep(0) still yields to the handlers
                for o in out.outputs:
                    self.metrics.on_token(o.request)
                    if o.finished:
                        self.metrics.on_finish(o.request)
                    q = self.waiters.get(o.request.request_id)
                    if q is not None:
                        q.put_nowait(o)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("engine loop crashed")
            os._exit(70)

    def _publish_events(self, t: float) -> None:
        events = self.engine.kv.drain_events()
        if events and self.kv_events:
            self.kv_events.publish(time.time(), events)

    # ---- helpers --------------------------------------------------------------------------------------
    async def _body(self, request: web.Request):
        raw = await request.read()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"Invalid JSON body: {exc}")

    def _resolve_model(self, model: str | None) -> tuple[str, int, str | None]:
        if model is None or model in self.served_names:
            return model or self.model_name, 0, None
        lid = self.lora.id_of(model)
        if lid is not None:
            return model, lid, model
        raise model_not_found(model)

    def _prompt_ids(self, g: openai_api.GenRequest) -> tuple[list[int], str]:
        if g.chat:
            text = self.tok.apply_chat_template(g.messages, g.add_generation_prompt)
            return self.tok.encode(text), text
        if g.prompt_ids is not None:
            bad = [t for t in g.prompt_ids if not 0 <= t < self.tok.vocab_size]
            if bad:
                raise bad_request(f"Token id {bad[0]} is out of vocabulary", "prompt")
            return g.prompt_ids, self.tok.decode(g.prompt_ids)
        return self.tok.encode(g.prompt_text), g.prompt_text

    def _check_length(self, n_prompt: int, max_tokens: int | None) -> int:
        mml = self.profile.max_model_len
        if n_prompt == 0:
            raise bad_request("The decoder prompt cannot be empty", "prompt")
        if n_prompt >= mml:
            raise bad_request(f"This model's maximum context length is {mml} tokens. However, your request has "
                              f"{n_prompt} input tokens. Please reduce the length of the input messages.",
                              "input_tokens")
        if max_tokens is not None and n_prompt + max_tokens > mml:
            raise bad_request(f"This model's maximum context length is {mml} tokens. However, you requested "
                              f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the "
                              f"completion). Please reduce the length of the messages or completion.",
                              "max_tokens")
        if max_tokens is None:
            return min(self.args.default_max_tokens, mml - n_prompt)
        return max_tokens

    def _text(self, ids: list[int]) -> str:
        out = []
        for i in ids:
            s = self._decode_cache.get(i)
            if s is None:
                s = self._decode_cache[i] = self.tok.decode([i])
            out.append(s)
        return "".join(out)

    # ---- generation -----------------------------------------------------------------------------------
    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        reported_cached = None
        try:
            body = await self._body(request)
            g = openai_api.parse(body, chat, request.headers.get("x-request-id"))
            g.model, lora_id, lora_name = self._resolve_model(g.model)
            target = request.headers.get(sidecar_mod.HEADER) if self.sidecar else None
            if target:
                leg = await self.sidecar.prefill(target, request.path, body, request.headers.get("x-request-id"))
                if leg is not None:
                    g.kv_transfer_params = leg["kv_transfer_params"]
                    reported_cached = leg["cached_tokens"]
            fail = self.failures.maybe_fail()
            if fail is not None:
                raise fail
            ids, prompt_text = self._prompt_ids(g)
            max_tokens = self._check_length(len(ids), g.max_tokens)
        except APIError as err:
            return err.response()
        self._count_request()
        kvp = g.kv_transfer_params if self.pd else None     # without a connector vLLM ignores them
        remote_decode = bool(kvp and kvp.get("do_remote_decode"))
        remote_prefill = kvp if kvp and kvp.get("do_remote_prefill") and kvp.get("remote_block_ids") else None
        req = Request(request_id=uuid.uuid4().hex, prompt_token_ids=ids, max_tokens=max_tokens,
                      arrival_time=self.now(), ignore_eos=g.ignore_eos,
                      eos_token_id=self.tok.eos_token_id, eos_prob=self.args.eos_prob,
                      seed=g.seed, lora_id=lora_id, lora_name=lora_name, remote_decode=remote_decode,
                      remote_prefill=remote_prefill)
        req.reported_cached_tokens = reported_cached
        q: asyncio.Queue = asyncio.Queue()
        self.waiters[req.request_id] = q
        self.engine.add_request(req)
        self.wake()
        created = openai_api.now_s()
        try:
            if g.stream:
                return await self._stream(request, g, req, q, created, prompt_text)
            return await self._complete(g, req, q, created, prompt_text)
        finally:
            self.waiters.pop(req.request_id, None)
            if not req.is_finished:
                self.engine.abort_request(req.request_id)   # client went away: free its blocks
                self.wake()

    def _usage(self, req: Request) -> dict:
        cached = max(0, req.num_cached_tokens)
        if req.reported_cached_tokens is not None:
            cached = req.reported_cached_tokens      # as the sidecar reports it: what the prefill leg said
        return openai_api.usage(req.num_prompt_tokens, len(req.output_token_ids), cached)

    async def _complete(self, g, req: Request, q: asyncio.Queue, created: int, prompt_text: str) -> web.Response:
        ids: list[int] = []
        while True:
            o = await q.get()
            ids.extend(o.new_token_ids)
            if o.finished:
                break
        text = self._text([i for i in ids if i != self.tok.eos_token_id])
        if g.echo and not g.chat:
            text = prompt_text + text
        kvp = self.pd.prefill_response_params(req) if (self.pd and req.remote_decode) else None
        return _json(openai_api.full_response(g, created, text, req.finish_reason, self._usage(req), kvp))

    async def _stream(self, request, g, req: Request, q: asyncio.Queue, created: int,
                      prompt_text: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        first = True

        async def send(obj) -> None:
            await resp.write(b"data: " + orjson.dumps(obj) + b"\n\n")

        while True:
            o = await q.get()
            if first and g.chat:
                # vLLM opens a chat stream with the role on the engine's first output, so no body byte
                # leaves before the first token (headers do, at once): a router's TTFT is the first chunk
                await send(openai_api.chunk(g, created, "", None, True))
                first = False
            text = self._text([i for i in o.new_token_ids if i != self.tok.eos_token_id])
            if first and g.echo:
                text = prompt_text + text
            c = openai_api.chunk(g, created, text, req.finish_reason if o.finished else None, first)
            if g.include_usage:
                c["usage"] = self._usage(req) if g.continuous_usage else None
            await send(c)
            first = False
            if o.finished:
                break
        if g.include_usage:
            await send(openai_api.usage_chunk(g, created, self._usage(req)))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def _count_request(self) -> None:
        self.requests_served += 1
        n = self.args.exit_after_requests
        if n and self.requests_served >= n:
            asyncio.get_running_loop().call_soon(self._abrupt_exit)

    # ---- other endpoints --------------------------------------------------------------------------------
    async def _render(self, request: web.Request, chat: bool) -> web.Response:
        """vLLM's renderer API: the request as a token-in GenerateRequest, without generating. Chat
        answers one object; completions a list, one per prompt (the sim serves batches of one)."""
        try:
            body = await self._body(request)
            g = openai_api.parse(body, chat, request.headers.get("x-request-id"))
            g.model, _, _ = self._resolve_model(g.model)
            ids, _ = self._prompt_ids(g)
            max_tokens = self._check_length(len(ids), g.max_tokens)
        except APIError as err:
            return err.response()
        out = {"request_id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, "token_ids": ids,
               "sampling_params": {"max_tokens": max_tokens, "ignore_eos": g.ignore_eos, "seed": g.seed},
               "model": g.model, "stream": bool(body.get("stream")), "stream_options": body.get("stream_options"),
               "cache_salt": body.get("cache_salt"), "priority": body.get("priority", 0),
               "kv_transfer_params": body.get("kv_transfer_params"), "token_offsets": None}
        self.render_calls += 1
        return _json(out if chat else [out])

    async def _tokenize(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            if not isinstance(body, dict):
                raise bad_request("request body must be a JSON object")
            self._resolve_model(body.get("model"))
            if "messages" in body:
                g = openai_api.parse(body, True, None)
                ids, _ = self._prompt_ids(g)
            elif isinstance(body.get("prompt"), str):
                ids = self.tok.encode(body["prompt"])
            else:
                raise bad_request("prompt (a string) or messages is required", "prompt")
        except APIError as err:
            return err.response()
        strs = [self.tok.id_to_token(i) for i in ids] if body.get("return_token_strs") else None
        return _json({"count": len(ids), "max_model_len": self.profile.max_model_len, "tokens": ids,
                      "token_strs": strs})

    async def _detokenize(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            if not isinstance(body, dict):
                raise bad_request("request body must be a JSON object")
            self._resolve_model(body.get("model"))
            toks = body.get("tokens")
            if not isinstance(toks, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in toks):
                raise bad_request("tokens must be a list of integers", "tokens")
            if any(not 0 <= t < self.tok.vocab_size for t in toks):
                raise bad_request("token id out of vocabulary", "tokens")
        except APIError as err:
            return err.response()
        return _json({"prompt": self.tok.decode(toks)})

    async def _models(self, request: web.Request) -> web.Response:
        created = openai_api.now_s()
        data = [{"id": n, "object": "model", "created": created, "owned_by": "vllm", "root": self.args.model,
                 "parent": None, "max_model_len": self.profile.max_model_len} for n in self.served_names]
        for name, (_, path) in self.lora.adapters.items():
            data.append({"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": path,
                         "parent": self.model_name, "max_model_len": self.profile.max_model_len})
        return _json({"object": "list", "data": data})

    async def _version(self, request: web.Request) -> web.Response:
        return _json({"version": "0.0.0-sim"})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.args.metrics_delay_s:
            await asyncio.sleep(self.args.metrics_delay_s)
        if self.args.metrics_garbage:
            return web.Response(body=b"vllm:num_requests_running{ this is not prometheus text\n<html>garbage</html>\n",
                                content_type="text/plain")
        return web.Response(body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _load_lora(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            msg = self.lora.load(body if isinstance(body, dict) else {})
        except APIError as err:
            return err.response()
        return web.Response(text=msg)

    async def _unload_lora(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            msg = self.lora.unload(body if isinstance(body, dict) else {})
        except APIError as err:
            return err.response()
        return web.Response(text=msg)

    async def _reset_prefix_cache(self, request: web.Request) -> web.Response:
        ok = self.engine.kv.reset()
        self._publish_events(self.clock.now())
        return web.Response(status=200 if ok else 409)

    async def _debug_kv(self, request: web.Request) -> web.Response:
        snap = self.engine.kv.snapshot()
        return _json({"block_size": self.engine.cfg.block_size, "num_gpu_blocks": self.engine.cfg.num_gpu_blocks,
                      "offload_blocks": self.engine.cfg.offload_blocks, "usage": self.engine.kv_usage(),
                      "tiers": snap})

    async def _debug_engine(self, request: web.Request) -> web.Response:
        e = self.engine
        return _json({"engine_id": self.engine_id, "profile": profiles.describe(self.profile),
                      "running": len(e.running), "waiting": len(e.waiting), "steps": e.step_count,
                      "preemptions": e.num_preemptions_total, "pinned": len(e.pinned),
                      "engine_time": self.clock.now(), "time_scale": self.clock.scale,
                      "pd": self.pd.stats() if self.pd else None,
                      "sidecar": self.sidecar.counts if self.sidecar else None,
                      "requests_served": self.requests_served, "render_calls": self.render_calls})
