"""Real processes on loopback for integration tests: stand-in pods, epp, Envoy."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading

from testbed.envoy import bootstrap, find_envoy
from testbed.http1 import get
from testbed.ports import free_port
from testbed.standin_pod import Pod
from testbed.wait import wait_port


class PodGroup:
    """Stand-in pods served by one asyncio loop in a background thread."""

    def __init__(self, count: int, sse_events: int = 5, sse_gap: float = 0.05) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.pods = [Pod(0, sse_events, sse_gap, name=f"pod-{i}") for i in range(count)]
        for p in self.pods:
            asyncio.run_coroutine_threadsafe(p.start(), self.loop).result(5)

    def hits(self) -> int:
        return sum(p.hits for p in self.pods)

    def close(self) -> None:
        for p in self.pods:
            asyncio.run_coroutine_threadsafe(p.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Epp:
    def __init__(self, tmp: str, endpoints_file: str, *extra: str, name: str = "epp", ports: dict | None = None) -> None:
        # ports: reuse another epp's (a restart behind the same Envoy)
        self.ports = dict(ports) if ports else {k: free_port() for k in ("grpc", "health", "metrics")}
        self.log = os.path.join(tmp, f"{name}.log")
        source = ["--endpoints-file", endpoints_file] if endpoints_file else []
        cmd = [sys.executable, "-m", "epp", *source, "--bind-address", "127.0.0.1",
               "--grpc-port", str(self.ports["grpc"]), "--grpc-health-port", str(self.ports["health"]),
               "--metrics-port", str(self.ports["metrics"]), *extra]
        if not any(a.startswith("--secure-serving") for a in extra):
            cmd.append("--secure-serving=false")
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_port(self.ports["grpc"], 20, self.proc)
        wait_port(self.ports["metrics"], 20, self.proc)

    def metrics(self) -> str:
        return get(self.ports["metrics"], "/metrics")[1].decode()

    def sample(self, name: str, **labels) -> float | None:
        from prometheus_client.parser import text_string_to_metric_families
        total = None
        for fam in text_string_to_metric_families(self.metrics()):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total = (total or 0.0) + s.value
        return total

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()


class Envoy:
    def __init__(self, tmp: str, modes: list[str], epp_port: int | None, epp_tls: bool = False,
                 direct_backend: int | None = None, response_body: str | None = None, name: str = "envoy") -> None:
        self.ports = {m: free_port() for m in modes}
        self.access_log = os.path.join(tmp, f"{name}-access.log" if name != "envoy" else "access.log")
        cfg = os.path.join(tmp, f"{name}.json")
        with open(cfg, "w") as f:
            json.dump(bootstrap(free_port(), self.ports, epp_port, epp_tls, direct_backend, self.access_log,
                                response_body), f)
        self.log = os.path.join(tmp, f"{name}.log")
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([find_envoy(), "-c", cfg, "--use-dynamic-base-id", "--log-level", "warn",
                                          "--file-flush-interval-msec", "50"], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        for port in self.ports.values():
            wait_port(port, 30, self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def landed_right(status: int, raw: bytes, sent: bytes, pool: list[str]) -> str | None:
    if status != 200:
        return f"status {status}: {raw[:300]!r}"
    r = json.loads(raw)
    if r["served_by"] not in pool:
        return f"served by {r['served_by']}, not in the pool"
    if r["dest_header"] != r["served_by"]:
        return f"served by {r['served_by']}, destination header {r['dest_header']!r}"
    if r["body_sha256"] != hashlib.sha256(sent).hexdigest():
        return f"body changed: sent {len(sent)} bytes, got {r['body_len']}"
    return None


async def wait_healthy(http, url: str, proc, timeout: float = 60.0) -> None:
    """Polls url + /health until 200; fails if the child process exits or the time runs out."""
    import aiohttp
    import time as _time
    deadline = _time.monotonic() + timeout
    while True:
        assert proc.returncode is None, "the server process exited"
        try:
            async with http.get(url + "/health") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert _time.monotonic() < deadline, f"{url} not healthy"
        await asyncio.sleep(0.05)
