"""List then watch one kind of object, keeping a local copy current, as client-go's reflector does.

list (paged) -> on_sync(items) -> watch from the list's resourceVersion with bookmarks -> on_event
for each ADDED / MODIFIED / DELETED. A watch that ends (server timeout, dropped connection) resumes
from the last resourceVersion seen; 410 Gone (that version is compacted away) relists. Errors back
off exponentially with jitter, capped, and reset once a watch delivers.
"""
from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Awaitable, Callable

import aiohttp
import orjson
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)

ListCall = Callable[..., Awaitable[Any]]   # an API list function bound to its object kind


class Gone(Exception):
    pass


async def _check(resp) -> None:
    """Raw responses (_preload_content=False) are not checked by the client library."""
    if resp.status == 410:
        raise Gone()
    if not 200 <= resp.status <= 299:
        text = (await resp.read())[:300].decode("utf-8", "replace")
        raise ApiException(status=resp.status, reason=text)


class Reflector:
    def __init__(self, what: str, call: ListCall, on_sync: Callable[[list[dict]], None],
                 on_event: Callable[[str, dict], None], *, page_size: int = 500, watch_timeout: int = 300,
                 backoff: tuple[float, float] = (0.2, 15.0)) -> None:
        self.what = what
        self.call = call
        self.on_sync = on_sync
        self.on_event = on_event
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.backoff_min, self.backoff_max = backoff
        self.synced = asyncio.Event()
        self.resource_version: str | None = None
        self.relists = 0
        self.errors = 0

    async def run(self) -> None:
        delay = self.backoff_min
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                delivered = await self._watch()
                if delivered:
                    delay = self.backoff_min
                continue
            except Gone:
                log.info("%s: resourceVersion %s is gone; relisting", self.what, self.resource_version)
                self.resource_version = None
                self.relists += 1
                continue
            except asyncio.CancelledError:
                raise
            except ApiException as e:
                if e.status == 410:
                    self.resource_version = None
                    self.relists += 1
                    continue
                self.errors += 1
                log.warning("%s: API error %s %s; retrying in %.1fs", self.what, e.status, e.reason, delay)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
                self.errors += 1
                log.warning("%s: %s: %s; retrying in %.1fs", self.what, type(e).__name__, e, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(self.backoff_max, delay * 2)

    async def _list(self) -> None:
        items: list[dict] = []
        cont = None
        while True:
            kw = {"limit": self.page_size, "_preload_content": False}
            if cont:
                kw["_continue"] = cont
            resp = await self.call(**kw)
            try:
                await _check(resp)
                doc = orjson.loads(await resp.read())
            finally:
                resp.release()
            items.extend(doc.get("items") or [])
            meta = doc.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                break
        self.resource_version = meta.get("resourceVersion") or "0"
        self.on_sync(items)
        self.synced.set()

    async def _watch(self) -> bool:
        """One watch request; returns whether it delivered anything (to reset the backoff)."""
        resp = await self.call(watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
                               timeout_seconds=self.watch_timeout, _preload_content=False,
                               _request_timeout=aiohttp.ClientTimeout(total=None, sock_read=self.watch_timeout + 30))
        delivered = False
        buf = b""
        try:
            await _check(resp)
            async for chunk in resp.content.iter_any():
                buf += chunk
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        break
                    line, buf = buf[:nl], buf[nl + 1:]
                    if line.strip():
                        self._event(orjson.loads(line))
                        delivered = True
        finally:
            resp.release()
        return delivered

    def _event(self, ev: dict) -> None:
        kind, obj = ev.get("type"), ev.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiException(status=obj.get("code") or 500, reason=obj.get("message") or "watch error")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = rv
        if kind == "BOOKMARK":
            return
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self.on_event(kind, obj)
