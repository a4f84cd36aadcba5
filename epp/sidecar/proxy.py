"""The sidecar's HTTP server: the P/D flow (nixlv2) on the completion paths, /health, and every other
request proxied to the local vLLM. One aiohttp client session on the one event loop, connections kept
alive; bodies are streamed through as they arrive.

A client that goes away cancels its handler (aiohttp's handler cancellation): the leg in flight is
cut, which makes vLLM abort that request and free its KV blocks (a prefill cut mid-way frees the
prefill pod's blocks; a decode cut after its KV pull has released the prefill pod's pinned blocks).
"""
from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import Counter

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from ..headers import PREFILLER as PREFILL_HEADER
from ..headers import REQUEST_ID
from .allowlist import Allowlist
from .options import Config
from .usage import SSERewriter, cached_tokens_of, dumps, loads, rewrite_json

log = logging.getLogger("epp.sidecar")

# token limits the prefill leg caps at one token, per API (upstream's lists; min_tokens only if set)
CHAT, RESPONSES, GENERATE = "chat_completions", "responses", "generate"
PD_PATHS = {"/v1/chat/completions": CHAT, "/v1/completions": CHAT, "/v1/messages": CHAT,
            "/v1/responses": RESPONSES, "/inference/v1/generate": GENERATE}
_LIMITS = {CHAT: ("max_tokens", "max_completion_tokens"), RESPONSES: ("max_output_tokens",),
           GENERATE: ("max_tokens",)}
PREFILL_KV = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
              "remote_block_ids": None, "remote_host": None, "remote_port": None}
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection", "TE", "Trailer",
    "Trailers", "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "Expect"))
RETRYABLE = (502, 503, 504)
FORBIDDEN = "Forbidden: prefill target not allowed by SSRF protection\n"
DECODER_DOWN = ("The decode node is not ready. Please check that the vLLM service is running and the port "
                "configuration is correct.")


def prefill_body(doc: dict, api: str) -> dict:
    """The prefill leg: no streaming, one token, and a request to keep the KV for a remote decoder."""
    leg = dict(doc)
    leg["stream"] = False
    leg.pop("stream_options", None)
    limits = leg
    if api == GENERATE:
        sp = leg.get("sampling_params")
        limits = leg["sampling_params"] = dict(sp) if isinstance(sp, dict) else {}
    for name in _LIMITS[api]:
        limits[name] = 1
    if "min_tokens" in limits and api != RESPONSES:
        limits["min_tokens"] = 1
    leg["kv_transfer_params"] = dict(PREFILL_KV)
    return leg


def _copy_headers(src, drop: tuple[str, ...] = ()) -> CIMultiDict:
    """End-to-end headers only: hop-by-hop ones (and those the Connection header names) are dropped."""
    skip = set(HOP_BY_HOP)
    skip.update(drop)
    for value in src.getall(hdrs.CONNECTION, ()):
        skip.update(t.strip().lower() for t in value.split(","))
    return CIMultiDict((k, v) for k, v in src.items() if k.lower() not in skip)


def error_response(status: int, kind: str, message: str) -> web.Response:
    """vLLM's error object, as upstream's sidecar answers its own errors."""
    return web.Response(status=status, content_type="application/json",
                        body=dumps({"object": "error", "message": message, "type": kind, "param": "",
                                    "code": status}))


def _timeout(total: float, connect: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total or None, sock_connect=connect or None)


def new_session() -> aiohttp.ClientSession:
    """Shared by every leg: no cookie jar (one proxy serves many clients), bodies passed as they come
    (no decompression), no headers of its own beyond Host."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=90),
        cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"), timeout=aiohttp.ClientTimeout(total=None))


class Proxy:
    """One listening port's routes, in front of one model-server port (a data-parallel rank)."""

    def __init__(self, cfg: Config, allowlist: Allowlist, session: aiohttp.ClientSession, model_server_port: int,
                 stats: Counter | None = None, sampler=random.randrange) -> None:
        self.cfg, self.allowlist, self.session = cfg, allowlist, session
        self.stats = stats if stats is not None else Counter()
        self.sampler = sampler
        scheme = "https" if "decoder" in cfg.tls_stages else "http"
        self.decoder = f"{scheme}://{cfg.model_server_host}:{model_server_port}"
        self.prefill_scheme = "https" if "prefiller" in cfg.tls_stages else "http"
        self.decoder_ssl = False if "decoder" in cfg.insecure_stages else True
        self.prefill_ssl = False if "prefiller" in cfg.insecure_stages else True
        self.prefill_timeout = _timeout(cfg.prefill_timeout, cfg.connect_timeout)
        self.decode_timeout = _timeout(cfg.decode_timeout, cfg.connect_timeout)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_request_body_bytes)
        app.router.add_get("/health", self.health)
        for path in PD_PATHS:
            app.router.add_post(path, self.pd)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    # ---- the P/D path -------------------------------------------------------------------------------
    def pick_target(self, values: list[str]) -> str:
        hosts = values[0].split(",") if len(values) == 1 else values
        if not hosts:
            return ""
        i = self.sampler(len(hosts)) if self.cfg.enable_prefiller_sampling else 0
        return hosts[i].strip()

    async def pd(self, request: web.Request) -> web.StreamResponse:
        api = PD_PATHS[request.path]
        target = self.pick_target(request.headers.getall(PREFILL_HEADER, []))
        if not target:
            self.stats["decode_only"] += 1
            return await self.pass_through(request)
        if not self.allowlist.allowed(target):
            self.stats["ssrf_denied"] += 1
            log.error("SSRF protection: prefill target %s not in the pool (client %s, path %s)", target,
                      request.remote, request.path)
            return web.Response(status=403, text=FORBIDDEN)
        raw = await request.read()
        try:
            doc = loads(raw)
            if not isinstance(doc, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as e:
            self.stats["bad_request"] += 1
            return error_response(400, "BadRequestError", f"invalid JSON: {e}")
        headers = _copy_headers(request.headers, (PREFILL_HEADER, REQUEST_ID, "accept-encoding"))
        headers[REQUEST_ID] = str(uuid.uuid4())     # one id, the same on both legs
        headers[hdrs.CONTENT_TYPE] = "application/json"
        try:
            got = await self.prefill(target, request, headers, dumps(prefill_body(doc, api)))
        except asyncio.CancelledError:      # the client left during the prefill: that leg is cut
            self.stats["client_disconnects"] += 1
            raise
        if isinstance(got, web.StreamResponse):
            return got
        if got is None:
            self.stats["prefill_fallback"] += 1
            return await self.send(request, hdrs.METH_POST, headers, raw)
        kv_params, cached = got
        doc["kv_transfer_params"] = kv_params       # verbatim, whatever the prefiller answered
        self.stats["prefill_decode"] += 1
        return await self.send(request, hdrs.METH_POST, headers, dumps(doc), cached=cached)

    async def prefill(self, target: str, request: web.Request, headers: CIMultiDict, body: bytes):
        """(kv_transfer_params, cached_tokens) on success; the prefiller's own answer for a 4xx; None when
        the request should decode alone (5xx, unreachable, timeout, a 2xx that is not JSON)."""
        if target.startswith("http://"):
            target = target[len("http://"):]
        why = ""
        for attempt in range(self.cfg.prefill_max_retries + 1):
            if attempt:
                await asyncio.sleep(self.cfg.prefill_retry_backoff)
                log.info("retrying prefill leg %s to %s (attempt %d): %s", headers[REQUEST_ID], target, attempt, why)
            try:
                url = URL(f"{self.prefill_scheme}://{target}{request.raw_path}", encoded=True)
                async with self.session.post(url, data=body, headers=headers, timeout=self.prefill_timeout,
                                             ssl=self.prefill_ssl, allow_redirects=False) as r:
                    payload = await r.read()
                    status, rheaders = r.status, r.headers
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                why = f"{type(e).__name__}: {e}"
                continue
            if 200 <= status < 300:
                try:
                    doc = loads(payload)
                    if not isinstance(doc, dict):
                        raise ValueError("not a JSON object")
                except ValueError as e:
                    why = f"status {status} with an unusable body ({e})"
                    break
                if "kv_transfer_params" not in doc:
                    log.warning("prefill response from %s has no kv_transfer_params", target)
                return doc.get("kv_transfer_params"), cached_tokens_of(doc)
            if 400 <= status < 500:
                self.stats["prefill_rejected"] += 1
                log.info("prefill leg to %s answered %d: passed to the client", target, status)
                return web.Response(status=status, headers=_copy_headers(rheaders), body=payload)
            why = f"status {status}"
            if status not in RETRYABLE:
                break
        log.warning("prefill leg %s to %s failed (%s): decoding alone", headers[REQUEST_ID], target, why)
        return None

    # ---- the local model server ---------------------------------------------------------------------
    async def forward(self, request: web.Request) -> web.StreamResponse:
        self.stats["proxied"] += 1
        return await self.pass_through(request)

    async def pass_through(self, request: web.Request) -> web.StreamResponse:
        """Any request, unchanged but for hop-by-hop headers (and x-prefiller-host-port), body streamed."""
        headers = _copy_headers(request.headers, (PREFILL_HEADER,))
        data = None
        if request.body_exists:
            data = request.content
            if request.content_length is not None:
                headers[hdrs.CONTENT_LENGTH] = str(request.content_length)
        return await self.send(request, request.method, headers, data)

    async def send(self, request: web.Request, method: str, headers: CIMultiDict, data,
                   cached: int | None = None) -> web.StreamResponse:
        url = URL(self.decoder + request.raw_path, encoded=True)
        try:
            resp = await self.session.request(method, url, data=data, headers=headers, timeout=self.decode_timeout,
                                              ssl=self.decoder_ssl, allow_redirects=False)
        except aiohttp.ClientConnectorError as e:
            log.error("failed to connect to the model server at %s: %s", self.decoder, e)
            return error_response(503, "ServiceUnavailable", DECODER_DOWN)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            log.error("proxy error to %s: %s", self.decoder, e)
            return error_response(502, "BadGateway", f"{type(e).__name__}: {e}")
        except asyncio.CancelledError:
            self.stats["client_disconnects"] += 1
            raise
        return await self.relay(request, resp, cached)

    async def relay(self, request: web.Request, resp: aiohttp.ClientResponse, cached: int | None) -> web.StreamResponse:
        """The model server's answer to the client, chunk by chunk as it arrives. With `cached` (a P/D
        decode leg) usage.prompt_tokens_details.cached_tokens is rewritten on the way."""
        done = False
        try:
            headers = _copy_headers(resp.headers)
            rewrite = cached is not None and hdrs.CONTENT_ENCODING not in resp.headers
            sse = "text/event-stream" in resp.headers.get(hdrs.CONTENT_TYPE, "")
            if rewrite and not sse:
                try:
                    body = rewrite_json(await resp.read(), cached)
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    log.error("model server answer broke off: %s", e)
                    return error_response(502, "BadGateway", f"{type(e).__name__}: {e}")
                done = True
                return web.Response(status=resp.status, reason=resp.reason, headers=headers, body=body)
            if not rewrite and resp.content_length is not None:
                headers[hdrs.CONTENT_LENGTH] = str(resp.content_length)
            out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
            await out.prepare(request)
            rw = SSERewriter(cached) if rewrite else None
            try:
                async for chunk in resp.content.iter_any():
                    if rw is not None and not (chunk := rw.feed(chunk)):
                        continue
                    await out.write(chunk)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                # the model server broke off mid-answer: break the client's connection too, so the
                # truncation shows (a clean end would look like a complete answer)
                log.error("model server answer broke off: %s", e)
                if request.transport is not None:
                    request.transport.close()
                return out
            if rw is not None and (tail := rw.flush()):
                await out.write(tail)
            done = True
            await out.write_eof()
            return out
        except (asyncio.CancelledError, ConnectionResetError):
            self.stats["client_disconnects"] += 1
            log.debug("client went away during %s %s: the model server's request is cut", request.method,
                      request.path)
            raise
        finally:
            if done:
                resp.release()
            else:
                resp.close()    # cuts the connection: vLLM aborts the request and frees its blocks
