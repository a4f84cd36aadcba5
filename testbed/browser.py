"""Headless Chromium (Debian's package, /usr/bin/chromium) driven over the Chrome DevTools Protocol: a
websocket to the page, spoken with aiohttp (already one of epp's dependencies), so no library downloads
a browser of its own. Enough for the web view's test: open a page, evaluate JavaScript in it, wait for a
condition on the live DOM, take a screenshot.

    async with Chromium(tmp_dir) as page:
        await page.goto("http://127.0.0.1:8082/ui")
        rows = await page.wait_for("document.querySelectorAll('#pool tbody tr').length", lambda n: n >= 3)
        await page.screenshot(tmp_dir / "ui.png")
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from typing import Any, Callable

import aiohttp

# the flags this closed network needs: without the background-networking ones Chromium keeps dialling
# Google's hosts (refused here), and a new user-data-dir keeps every run from the last one's state
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars"]


def find_chromium() -> str | None:
    """$EPP_CHROMIUM, else chromium on PATH (Debian's package: /usr/bin/chromium)."""
    return os.environ.get("EPP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


class CDPError(RuntimeError):
    pass


class Chromium:
    def __init__(self, workdir: str | os.PathLike, width: int = 1400, height: int = 1100, timeout: float = 30) -> None:
        self.workdir = str(workdir)
        self.width, self.height, self.timeout = width, height, timeout
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.workdir, "chromium.log")
        self._http: aiohttp.ClientSession | None = None
        self._ws = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._events: dict[str, list[asyncio.Future]] = {}
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> "Chromium":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        exe = find_chromium()
        if not exe:
            raise RuntimeError("chromium not found: hack/setup.sh installs Debian's chromium (apt-get install chromium)")
        profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=self.workdir)
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
               f"--window-size={self.width},{self.height}", "about:blank"]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        # Chromium writes the port it picked (and the browser's websocket path) into the profile
        active = os.path.join(profile, "DevToolsActivePort")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        port = None
        while port is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode} (log {self.log_path})")
            if loop.time() > deadline:
                raise TimeoutError(f"chromium did not open its DevTools port in {self.timeout:.0f}s (log {self.log_path})")
            try:
                with open(active) as f:
                    first = f.readline().strip()
                port = int(first) if first.isdigit() else None
            except OSError:
                pass
            if port is None:
                await asyncio.sleep(0.05)
        self._http = aiohttp.ClientSession()
        async with self._http.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json(content_type=None)
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = await self._http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            doc = json.loads(msg.data)
            if "id" in doc:
                fut = self._waiting.pop(doc["id"], None)
                if fut is not None and not fut.done():
                    if "error" in doc:
                        fut.set_exception(CDPError(f"{doc['error'].get('message')}: {doc['error'].get('data', '')}"))
                    else:
                        fut.set_result(doc.get("result", {}))
            elif "method" in doc:
                for fut in self._events.pop(doc["method"], []):
                    if not fut.done():
                        fut.set_result(doc.get("params", {}))
        for fut in self._waiting.values():     # the browser went away
            if not fut.done():
                fut.set_exception(CDPError("the DevTools connection closed"))

    async def send(self, method: str, params: dict | None = None) -> dict:
        i = next(self._ids)
        fut = self._waiting[i] = asyncio.get_running_loop().create_future()
        await self._ws.send_str(json.dumps({"id": i, "method": method, "params": params or {}}))
        return await asyncio.wait_for(fut, self.timeout)

    def _event(self, method: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._events.setdefault(method, []).append(fut)
        return fut

    async def goto(self, url: str) -> None:
        loaded = self._event("Page.loadEventFired")
        res = await self.send("Page.navigate", {"url": url})
        if res.get("errorText"):
            raise CDPError(f"navigating to {url}: {res['errorText']}")
        await asyncio.wait_for(loaded, self.timeout)

    async def eval(self, expression: str) -> Any:
        """The expression's value (JSON-able), evaluated in the page; a JavaScript exception raises."""
        res = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                   "awaitPromise": True})
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise CDPError(f"{expression!r} raised: {d.get('exception', {}).get('description') or d.get('text')}")
        return res.get("result", {}).get("value")

    async def wait_for(self, expression: str, test: Callable[[Any], bool] = bool, timeout: float | None = None,
                       every: float = 0.1, what: str | None = None) -> Any:
        """Evaluates `expression` until test(value) holds; returns that value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.timeout)
        while True:
            value = await self.eval(expression)
            if test(value):
                return value
            if loop.time() > deadline:
                raise TimeoutError(f"timed out waiting for {what or expression} (last value: {value!r})")
            await asyncio.sleep(every)

    async def screenshot(self, path: str | os.PathLike) -> str:
        """A PNG of the whole page (not only the window), written to path."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics.get("contentSize") or {}
        clip = {"x": 0, "y": 0, "width": max(self.width, size.get("width", self.width)),
                "height": min(6000, max(self.height, size.get("height", self.height))), "scale": 1}
        res = await self.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True})
        with open(path, "wb") as f:
            f.write(base64.b64decode(res["data"]))
        return str(path)

    async def close(self) -> None:
        if self._ws is not None:
            try:
                await asyncio.wait_for(self.send("Browser.close"), 3)
            except (CDPError, asyncio.TimeoutError, ConnectionError, RuntimeError):
                pass
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self._http is not None:
            await self._http.close()
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
