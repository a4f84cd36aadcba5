"""A stand-in model server: answers OpenAI-shaped requests at once, reports what it received, and
serves vLLM-named /metrics whose values can be set at run time. For tests, the overhead benchmark
and the local stack when vllm_sim is not wanted. Raw asyncio HTTP/1.1, so a pod costs little CPU.

    python -m testbed.standin_pod --port 8000 [--count 3] [--sse-events 5 --sse-gap 0.05]

POST /admin/metrics {"waiting": 3, "running": 1, "kv": 0.5} sets the gauges.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal

from .http1 import LAST_CHUNK, chunk, chunked_head, read_request, response

DEST = b"x-gateway-destination-endpoint"


class Pod:
    def __init__(self, port: int, sse_events: int = 5, sse_gap: float = 0.02, name: str = "",
                 host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host  # any 127.x.y.z: tests give pods their own loopback IPs, as pods have
        self.address = f"{host}:{port}"
        self.name = name or (f"pod-{port}" if port else "")
        self.sse_events = sse_events
        self.sse_gap = sse_gap
        self.waiting, self.running, self.kv = 0.0, 0.0, 0.0
        self.hits = 0
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, self.host, self.port, limit=1 << 22)
        if self.port == 0:  # an ephemeral port: no window in which another process can take it
            self.port = self.server.sockets[0].getsockname()[1]
            self.address = f"{self.host}:{self.port}"
            self.name = self.name or f"pod-{self.port}"

    async def stop(self) -> None:
        if self.server:
            self.server.close()

    def metrics_text(self) -> bytes:
        lbl = 'model_name="m",engine="0"'
        return (f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{{lbl}}} {self.running}\n"
                f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{{lbl}}} {self.waiting}\n"
                f"# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{{lbl}}} {self.kv}\n"
                f'vllm:cache_config_info{{block_size="16",num_gpu_blocks="1000",engine="0"}} 1.0\n').encode()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._handle(*await read_request(reader), writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _send(writer, status: int, body: bytes, ctype: bytes = b"application/json") -> None:
        writer.write(response(status, body, ctype))

    async def _handle(self, method: bytes, path: bytes, headers, body: bytes, writer) -> None:
        if path == b"/metrics":
            return self._send(writer, 200, self.metrics_text(), b"text/plain; version=0.0.4")
        if path == b"/health":
            return self._send(writer, 200, b"{}")
        if path == b"/admin/metrics":
            vals = json.loads(body)
            self.waiting, self.running, self.kv = (float(vals.get("waiting", 0)), float(vals.get("running", 0)),
                                                   float(vals.get("kv", 0)))
            return self._send(writer, 200, b"{}")
        self.hits += 1
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            req = {}
        req = req if isinstance(req, dict) else {}
        report = {"served_by": self.address, "path": path.decode(),
                  "dest_header": b",".join(headers.get(DEST, [])).decode() or None,
                  "prefiller_header": b",".join(headers.get(b"x-prefiller-host-port", [])).decode() or None,
                  "body_sha256": hashlib.sha256(body).hexdigest(), "body_len": len(body),
                  "model": req.get("model"),
                  "server_model": req.get("model"),   # not mapped back by a model rewrite, unlike "model"
                  "usage": {"prompt_tokens": max(1, len(body) // 4), "completion_tokens": 1,
                            "total_tokens": max(1, len(body) // 4) + 1, "prompt_tokens_details": {"cached_tokens": 0}}}
        if not req.get("stream"):
            return self._send(writer, 200, json.dumps(report).encode())
        writer.write(chunked_head(b"text/event-stream"))
        usage = report.pop("usage")
        for i in range(self.sse_events):
            ev = dict(report, choices=[{"index": 0, "text": f"t{i}"}]) if i == 0 else {"choices": [{"index": 0, "text": f"t{i}"}]}
            frame = b"data: " + json.dumps(ev).encode() + b"\n\n"
            writer.write(chunk(frame))
            await writer.drain()
            await asyncio.sleep(self.sse_gap)
        for frame in (b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n", b"data: [DONE]\n\n"):
            writer.write(chunk(frame))
        writer.write(LAST_CHUNK)
        await writer.drain()


async def _main(a) -> None:
    pods = [Pod(a.port + i, a.sse_events, a.sse_gap) for i in range(a.count)]
    for p in pods:
        await p.start()
        print(f"stand-in pod on {p.address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--sse-events", type=int, default=5)
    ap.add_argument("--sse-gap", type=float, default=0.02)
    asyncio.run(_main(ap.parse_args()))
