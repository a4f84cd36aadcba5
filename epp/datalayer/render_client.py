"""Client of vLLM's renderer API (/v1/completions/render, /v1/chat/completions/render): the prompt's
token ids exactly as the model server computes them, chat template included.

It is on the request path, so it is bounded every way it can hang or grow:
- a cache of rendered prompts bounded in tokens (a repeated prompt costs no round trip);
- one call in flight per distinct prompt (a burst of one prompt is rendered once);
- a timeout per call, and a circuit breaker: after `BREAKER_FAILURES` failures in a row the renderer
  is skipped for `cooldown` seconds, then one call probes it, so a dead render service costs each
  request nothing instead of a timeout.
A failure raises RenderError; callers fall back to approximate scoring.
"""
from __future__ import annotations

import asyncio
import time
from array import array
from collections import OrderedDict

import aiohttp
import orjson

BREAKER_FAILURES = 3


class RenderError(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason   # timeout | http_status | connect | bad_response | breaker_open


class RenderClient:
    def __init__(self, url: str, timeout: float, cache_tokens: int, max_concurrency: int = 64,
                 cooldown: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.cache_tokens = cache_tokens
        self.max_concurrency = max_concurrency
        self.cooldown = cooldown
        self._cache: OrderedDict[bytes, array] = OrderedDict()
        self._cached_tokens = 0
        self._inflight: dict[bytes, asyncio.Future] = {}
        self._session: aiohttp.ClientSession | None = None
        self._failures = 0             # in a row
        self._open_until = 0.0         # the breaker is open (renderer skipped) until then
        self._probing = False
        self.calls = 0

    def cached(self, key: bytes) -> array | None:
        ids = self._cache.get(key)
        if ids is not None:
            self._cache.move_to_end(key)
        return ids

    def available(self) -> bool:
        """False while the breaker is open: the caller falls back at once."""
        if not self._open_until:
            return True
        return time.monotonic() >= self._open_until and not self._probing

    async def render(self, path: str, payload: bytes, key: bytes, timeout: float | None = None) -> array:
        """Token ids of the (first) prompt of `payload`, a JSON body for `path`; `timeout` overrides the
        default (multimodal prompts take longer to process)."""
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        if not self.available():
            raise RenderError("breaker_open")
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        probing = bool(self._open_until)
        self._probing = probing
        try:
            ids = await self._call(path, payload, timeout or self.timeout)
        except RenderError as e:
            self._failed()
            fut.set_exception(e)
            fut.exception()      # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            del self._inflight[key]
            if probing:
                self._probing = False
        self._failures, self._open_until = 0, 0.0
        self._remember(key, ids)
        fut.set_result(ids)
        return ids

    def _failed(self) -> None:
        self._failures += 1
        if self._failures >= BREAKER_FAILURES:
            self._open_until = time.monotonic() + self.cooldown

    async def _call(self, path: str, payload: bytes, timeout: float) -> array:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_concurrency, keepalive_timeout=90))
        self.calls += 1
        try:
            async with self._session.post(self.url + path, data=payload, timeout=aiohttp.ClientTimeout(total=timeout),
                                          headers={"Content-Type": "application/json"}) as r:
                raw = await r.read()
                if r.status != 200:
                    raise RenderError("http_status", f"{r.status} {raw[:200].decode('utf-8', 'replace')}")
        except asyncio.TimeoutError:
            raise RenderError("timeout", f"no answer from {self.url}{path} in {timeout}s") from None
        except aiohttp.ClientError as e:
            raise RenderError("connect", f"{self.url}{path}: {e}") from None
        try:
            doc = orjson.loads(raw)
            if isinstance(doc, list):     # completions: one GenerateRequest per prompt
                doc = doc[0]
            return array("I", doc["token_ids"])
        except (orjson.JSONDecodeError, LookupError, TypeError, OverflowError, ValueError) as e:
            raise RenderError("bad_response", f"{type(e).__name__}: {e}") from None

    def _remember(self, key: bytes, ids: array) -> None:
        n = len(ids)
        if n > self.cache_tokens:
            return
        old = self._cache.pop(key, None)
        if old is not None:
            self._cached_tokens -= len(old)
        self._cache[key] = ids
        self._cached_tokens += n
        while self._cached_tokens > self.cache_tokens:
            _, dropped = self._cache.popitem(last=False)
            self._cached_tokens -= len(dropped)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
