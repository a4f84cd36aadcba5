"""P/D disaggregation with vLLM's NixlConnector contract.

Prefill side (`kv_transfer_params.do_remote_decode`): the engine prefills, samples one token, finishes
with "length" and keeps the request's blocks pinned until the decoder has read them (or the timeout);
the response carries the parameters the decoder needs. Decode side (`do_remote_prefill` with
`remote_block_ids`): the engine allocates blocks for the prompt, asks this connector to pull the KV of
every prompt token it does not hold locally, and decodes once the pull completes.

Bytes really move: each engine keeps a small buffer standing for its KV blocks (4 bytes per token slot,
the token id), the decoder reads the prefill engine's blocks into its own and checks they hold its
prompt. The read goes over NIXL (UCX, DRAM, loopback TCP) when `nixl` imports, else over HTTP on the
sim's own port (the side channel). Either way the pull takes at least the modelled transfer time
(profile network bandwidth x full-size KV bytes), scaled by the time scale.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import orjson
from aiohttp import web

if TYPE_CHECKING:
    from .engine import Request
    from .server import SimServer

log = logging.getLogger("vllm_sim.pd")
CONNECTORS = ("NixlConnector",)


@dataclass
class KVTransferConfig:
    kv_connector: str
    kv_role: str
    engine_id: str | None = None


def parse_kv_transfer_config(text: str | None) -> KVTransferConfig | None:
    if not text:
        return None
    d = json.loads(text)
    conn = d.get("kv_connector")
    if conn not in CONNECTORS:
        raise ValueError(f"unsupported kv_connector {conn!r}; the simulator implements {', '.join(CONNECTORS)}")
    role = d.get("kv_role", "kv_both")
    if role not in ("kv_both", "kv_producer", "kv_consumer"):
        raise ValueError(f"invalid kv_role {role!r}")
    return KVTransferConfig(conn, role, d.get("engine_id"))


class PDConnector:
    def __init__(self, server: "SimServer", cfg: KVTransferConfig):
        self.server = server
        self.cfg = cfg
        if cfg.engine_id:
            server.engine_id = cfg.engine_id
        self.host = os.environ.get("VLLM_NIXL_SIDE_CHANNEL_HOST", server.args.host)
        self.port = server.args.port
        self.session: aiohttp.ClientSession | None = None
        self.nixl = None
        self.counts = {"pulls": 0, "pull_failures": 0, "bytes_pulled": 0, "served": 0, "released": 0,
                       "transport": "http"}
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        if self.server.args.kv_transport in ("auto", "nixl"):
            try:
                from .nixl_transport import NixlTransport
                self.nixl = NixlTransport(self.server.engine_id, self.server.engine.kv_data,
                                          self.server.engine.block_bytes())
                self.counts["transport"] = "nixl"
                self._tasks.add(asyncio.create_task(self._poll_notifs()))
            except Exception as exc:   # nixl absent or UCX unusable here: plain HTTP
                if self.server.args.kv_transport == "nixl":
                    raise
                log.info("NIXL unavailable (%s); using the HTTP fallback transport", exc)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self.session:
            await self.session.close()
        if self.nixl:
            self.nixl.close()

    async def _poll_notifs(self) -> None:
        while True:
            await asyncio.sleep(0.005 if self.server.engine.pinned else 0.05)
            for rid in self.nixl.released_requests():
                if self.server.engine.release_pinned(rid):
                    self.counts["released"] += 1
                    self.server.wake()

    def stats(self) -> dict:
        return dict(self.counts)

    # ---- prefill side ---------------------------------------------------------------------------------
    def prefill_response_params(self, req: "Request") -> dict:
        return {"do_remote_prefill": True, "do_remote_decode": False,
                "remote_block_ids": self.server.engine.kv.blocks_of(req.request_id),
                "remote_engine_id": self.server.engine_id, "remote_host": self.host, "remote_port": self.port,
                "tp_size": 1, "remote_request_id": req.request_id}

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/kv/pull", self._serve_pull)
        r.add_post("/kv/release", self._serve_release)
        r.add_get("/kv/nixl_metadata", self._serve_metadata)

    def _pinned_blocks(self, rid: str, block_ids: list[int]) -> bool:
        e = self.server.engine
        return rid in e.pinned and set(block_ids) <= set(e.kv.blocks_of(rid))

    async def _serve_pull(self, request: web.Request) -> web.Response:
        d = orjson.loads(await request.read())
        rid, block_ids = d.get("request_id"), d.get("block_ids") or []
        if not self._pinned_blocks(rid, block_ids):
            return web.Response(status=404, text="blocks not pinned (expired or unknown request)")
        bb = self.server.engine.block_bytes()
        data = self.server.engine.kv_data
        self.counts["served"] += 1
        return web.Response(body=b"".join(bytes(data[b * bb:(b + 1) * bb]) for b in block_ids),
                            content_type="application/octet-stream")

    async def _serve_release(self, request: web.Request) -> web.Response:
        d = orjson.loads(await request.read())
        ok = self.server.engine.release_pinned(d.get("request_id"))
        if ok:
            self.counts["released"] += 1
            self.server.wake()
        return web.Response(status=200 if ok else 404)

    async def _serve_metadata(self, request: web.Request) -> web.Response:
        if not self.nixl:
            return web.Response(status=404, text="no NIXL agent")
        return web.Response(body=self.nixl.metadata(), headers={"x-nixl-base": str(self.nixl.base_addr),
                                                                  "x-nixl-agent": self.nixl.name})

    # ---- decode side ----------------------------------------------------------------------------------
    def start_pull(self, req: "Request") -> None:
        t = asyncio.create_task(self._pull(req))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _pull(self, req: "Request") -> None:
        srv, e = self.server, self.server.engine
        p = req.remote_prefill or {}
        bs = e.cfg.block_size
        start = time.monotonic()
        ok = notified = False
        hit_tokens = req.num_computed_tokens - req.load_tokens
        first, last = hit_tokens // bs, -(-req.num_computed_tokens // bs)
        try:
            remote = list(p.get("remote_block_ids") or [])[first:last]
            local = e.kv.blocks_of(req.request_id)[first:last]
            if len(remote) != len(local):
                raise ValueError(f"remote has {len(remote)} blocks for {len(local)} needed")
            base = f"http://{p['remote_host']}:{p['remote_port']}"
            if local:
                if self.nixl:
                    nbytes = await self.nixl.read(self.session, base, p.get("remote_engine_id"),
                                                  p.get("remote_request_id"), remote, local)
                    notified = True
                else:
                    nbytes = await self._http_read(base, p.get("remote_request_id"), remote, local)
                self.counts["bytes_pulled"] += nbytes
            ok = req.request_id in e.requests and e.verify_blocks(req, req.num_computed_tokens)
            if not ok:
                log.warning("pulled KV does not match the prompt of %s", req.request_id)
        except Exception as exc:
            log.warning("KV pull for %s failed: %s", req.request_id, exc)
        finally:
            if not notified:      # NIXL's READ notification releases the blocks; otherwise tell the prefill side
                await self._release(p)
        self.counts["pulls" if ok else "pull_failures"] += 1
        modelled = srv.clock.wall_delay(srv.profile.transfer_time(req.load_tokens))
        rest = modelled - (time.monotonic() - start)
        if rest > 0:
            await asyncio.sleep(rest)
        e.finish_remote_load(req.request_id, ok, srv.now())
        srv.wake()

    async def _http_read(self, base: str, rid: str, remote: list[int], local: list[int]) -> int:
        async with self.session.post(f"{base}/kv/pull", data=orjson.dumps({"request_id": rid, "block_ids": remote}),
                                     headers={"Content-Type": "application/json"}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"remote answered {resp.status}: {await resp.text()}")
            data = await resp.read()
        e = self.server.engine
        bb = e.block_bytes()
        if len(data) != bb * len(remote):
            raise RuntimeError("short KV read")
        for i, b in enumerate(local):
            e.kv_data[b * bb:(b + 1) * bb] = data[i * bb:(i + 1) * bb]
        return len(data)

    async def _release(self, p: dict) -> None:
        try:
            base = f"http://{p['remote_host']}:{p['remote_port']}"
            async with self.session.post(f"{base}/kv/release",
                                         data=orjson.dumps({"request_id": p.get("remote_request_id")}),
                                         headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
        except Exception as exc:   # the prefill side times the pin out anyway
            log.info("release notification failed: %s", exc)
