"""Moving KV block bytes with NIXL (UCX backend, DRAM buffers, TCP over loopback).

Each sim registers its block buffer with a NIXL agent named after its engine id. The decoder fetches the
prefill agent's metadata once over the HTTP side channel (GET /kv/nixl_metadata), then READs the remote
block descriptors into its own blocks; the READ carries the remote request id as its notification, which
tells the prefill side it may free the pinned blocks (as vLLM's NixlConnector does).
"""
from __future__ import annotations

import asyncio
import logging
import os

os.environ.setdefault("UCX_NET_DEVICES", "lo")     # a simulator: KV only ever moves on this host
os.environ.setdefault("UCX_TLS", "tcp,self,sm")

import numpy as np                                    # noqa: E402  (nixl needs numpy)
from nixl._api import nixl_agent, nixl_agent_config   # noqa: E402

log = logging.getLogger("vllm_sim.nixl")


class NixlTransport:
    def __init__(self, name: str, buf: bytearray, block_bytes: int):
        self.name = name
        self.block_bytes = block_bytes
        self.view = np.frombuffer(buf, dtype=np.uint8)    # pins the bytearray: its address never moves
        self.base_addr = self.view.ctypes.data
        self.agent = nixl_agent(name, nixl_agent_config(backends=["UCX"]))
        self.reg = self.agent.register_memory(
            self.agent.get_reg_descs([(self.base_addr, len(buf), 0, "")], "DRAM"))
        self.remotes: dict[str, tuple[str, int]] = {}      # side channel URL -> (agent name, buffer base)

    def metadata(self) -> bytes:
        return self.agent.get_agent_metadata()

    async def _remote(self, session, base_url: str, engine_id: str | None) -> tuple[str, int]:
        known = self.remotes.get(base_url)
        if known and (engine_id is None or known[0] == engine_id):
            return known
        if known:       # the prefill pod restarted under a new engine id: drop the stale agent
            self.agent.remove_remote_agent(known[0])
        async with session.get(f"{base_url}/kv/nixl_metadata") as resp:
            if resp.status != 200:
                raise RuntimeError(f"no NIXL metadata at {base_url} ({resp.status})")
            meta = await resp.read()
            base = int(resp.headers["x-nixl-base"])
        name = self.agent.add_remote_agent(meta)
        name = name.decode() if isinstance(name, bytes) else name
        self.remotes[base_url] = (name, base)
        return name, base

    async def read(self, session, base_url: str, engine_id: str | None, remote_request_id: str,
                   remote_blocks: list[int], local_blocks: list[int]) -> int:
        name, rbase = await self._remote(session, base_url, engine_id)
        bb = self.block_bytes
        local = self.agent.get_xfer_descs([(self.base_addr + b * bb, bb, 0) for b in local_blocks], "DRAM")
        remote = self.agent.get_xfer_descs([(rbase + b * bb, bb, 0) for b in remote_blocks], "DRAM")
        h = self.agent.initialize_xfer("READ", local, remote, name, (remote_request_id or "").encode())
        try:
            state = self.agent.transfer(h)
            while state not in ("DONE", "ERR"):
                await asyncio.sleep(0.0005)
                state = self.agent.check_xfer_state(h)
            if state == "ERR":
                self.remotes.pop(base_url, None)
                raise RuntimeError("NIXL transfer failed")
        finally:
            self.agent.release_xfer_handle(h)
        return bb * len(local_blocks)

    def released_requests(self) -> list[str]:
        """Request ids whose blocks a decoder has finished reading (from NIXL notifications)."""
        out = []
        for msgs in self.agent.get_new_notifs().values():
            out.extend(m.decode() for m in msgs)
        return out

    def close(self) -> None:
        try:
            self.agent.deregister_memory(self.reg)
        except Exception:   # shutting down anyway
            pass
