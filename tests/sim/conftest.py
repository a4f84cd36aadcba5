import os
import subprocess
import sys
import time
import urllib.request

import aiohttp
import pytest

from testbed.ports import free_port
from testbed.wait import until
from vllm_sim.cli import build_parser
from vllm_sim.server import SimServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable


TIMEOUT = 60.0      # generous: a deadline that only a hang reaches, whatever the host's load


class InProcSim:
    """A SimServer on the test's own event loop, on a loopback port."""

    def __init__(self, *flags: str):
        self.port = free_port()
        self.args = build_parser().parse_args(["--port", str(self.port), *flags])
        self.server = None
        self.url = f"http://127.0.0.1:{self.port}"

    async def __aenter__(self):
        self.server = SimServer(self.args)
        await self.server.start()
        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc):
        await self.http.close()
        await self.server.stop()

    async def post(self, path, body=None, raw=None):
        data = raw if raw is not None else None
        kw = {"data": data} if raw is not None else {"json": body}
        async with self.http.post(self.url + path, **kw) as r:
            ctype = r.headers.get("Content-Type", "")
            out = await r.json() if "json" in ctype else await r.text()
            return r.status, out

    async def get(self, path):
        async with self.http.get(self.url + path) as r:
            ctype = r.headers.get("Content-Type", "")
            return r.status, (await r.json() if "json" in ctype else await r.text())

    async def engine_when(self, pred, what: str, timeout=TIMEOUT) -> dict:
        """Poll /debug/engine until `pred(state)` holds; the timeout only bounds a hang, never the speed."""
        return (await until(lambda: self.get("/debug/engine"), what, timeout, test=lambda r: pred(r[1])))[1]

    async def wait_idle(self, timeout=TIMEOUT) -> dict:
        return await self.engine_when(lambda d: d["running"] == 0 and d["waiting"] == 0, "engine idle", timeout)


class SimProcess:
    def __init__(self, *flags: str, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([PY, "-m", "vllm_sim", "--port", str(self.port), *flags], cwd=ROOT,
                                     env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)

    def wait_healthy(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sim exited: {self.proc.stdout.read()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=0.5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("sim not healthy")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def sim_process():
    started = []

    def start(*flags, env=None):
        p = SimProcess(*flags, env=env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
