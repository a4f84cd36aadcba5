"""KV-cache events on ZMQ in vLLM's wire format.

Per engine step with cache changes, one message of three frames: topic, an 8-byte big-endian sequence
number, and a msgpack payload `[ts, events, data_parallel_rank]` (a msgspec struct encoded array-like).
Events are arrays tagged by their class name:
    ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium(, lora_name)]
(lora_id is None for the base model; lora_name is appended only for LoRA blocks, as msgspec omits trailing
defaults.)
    ["BlockRemoved", block_hashes, medium]
    ["AllBlocksCleared"]
The PUB socket binds when the endpoint host is a wildcard and connects otherwise; the sim also takes a
comma list of endpoints to connect to (ours, not vLLM's: every message goes to each, e.g. two EPP
replicas that each bind their own address). An optional ROUTER
socket on `replay_endpoint` answers a request frame holding a start sequence number with every buffered
message from there on ([identity, b"", seq, payload] each), then an end marker with sequence -1.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from dataclasses import dataclass

import msgpack
import zmq
import zmq.asyncio

from .engine.kv_cache import Cleared, Removed, Stored

log = logging.getLogger("vllm_sim.kv_events")
END_SEQ = (-1).to_bytes(8, "big", signed=True)


@dataclass
class KVEventsConfig:
    endpoint: str = "tcp://*:5557"
    topic: str = ""
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000


def parse_kv_events_config(text: str | None) -> KVEventsConfig | None:
    if not text:
        return None
    d = json.loads(text)
    if not d.get("enable_kv_cache_events", False):
        return None
    pub = d.get("publisher", "null")
    if pub not in ("zmq", "null"):
        raise ValueError(f"unsupported kv events publisher {pub!r} (zmq or null)")
    if pub == "null":
        return None
    return KVEventsConfig(endpoint=d.get("endpoint", "tcp://*:5557"), topic=d.get("topic", ""),
                          replay_endpoint=d.get("replay_endpoint"), buffer_steps=int(d.get("buffer_steps", 10_000)),
                          hwm=int(d.get("hwm", 100_000)))


def encode_event(ev, lora_name_of=None) -> list:
    if isinstance(ev, Stored):
        out = ["BlockStored", ev.block_hashes, ev.parent_block_hash, ev.token_ids, ev.block_size, ev.lora_id,
               ev.medium]
        if ev.lora_id and lora_name_of is not None:     # newer vLLM appends lora_name (omitted when None)
            name = lora_name_of(ev.lora_id)
            if name is not None:
                out.append(name)
        return out
    if isinstance(ev, Removed):
        return ["BlockRemoved", ev.block_hashes, ev.medium]
    if isinstance(ev, Cleared):
        return ["AllBlocksCleared"]
    raise TypeError(f"unknown event {ev!r}")


def _is_wildcard(endpoint: str) -> bool:
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in ("*", "0.0.0.0", "[::]", "::") or endpoint.startswith(("ipc://", "inproc://")) and "*" in endpoint


class KVEventPublisher:
    def __init__(self, cfg: KVEventsConfig, data_parallel_rank: int = 0):
        self.cfg = cfg
        self.dp_rank = data_parallel_rank
        self.seq = 0
        self.buffer: deque[tuple[int, bytes]] = deque(maxlen=max(1, cfg.buffer_steps))
        # PUB sends never block (NOBLOCK, drop at the high-water mark), so a plain socket is enough there
        self.ctx = zmq.Context()
        self.actx = zmq.asyncio.Context(self.ctx)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, cfg.hwm)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.router = None
        self._task = None
        self.lora_name_of = None

    async def start(self) -> None:
        for endpoint in self.cfg.endpoint.split(","):
            if _is_wildcard(endpoint):
                self.pub.bind(endpoint)
            else:
                self.pub.connect(endpoint)
        if self.cfg.replay_endpoint:
            self.router = self.actx.socket(zmq.ROUTER)
            self.router.setsockopt(zmq.LINGER, 0)
            self.router.bind(self.cfg.replay_endpoint)
            self._task = asyncio.create_task(self._serve_replay())

    def publish(self, ts: float, events: list) -> None:
        payload = msgpack.packb([ts, [encode_event(e, self.lora_name_of) for e in events], self.dp_rank],
                                use_bin_type=True)
        seq = self.seq
        self.seq += 1
        self.buffer.append((seq, payload))
        try:
            self.pub.send_multipart([self.cfg.topic.encode(), seq.to_bytes(8, "big"), payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("kv events dropped at seq %d (high-water mark)", seq)

    async def _serve_replay(self) -> None:
        while True:
            frames = await self.router.recv_multipart()
            ident, start_b = frames[0], frames[-1]
            start = int.from_bytes(start_b, "big")
            for seq, payload in list(self.buffer):
                if seq >= start:
                    await self.router.send_multipart([ident, b"", seq.to_bytes(8, "big"), payload])
            await self.router.send_multipart([ident, b"", END_SEQ, b""])

    def close(self) -> None:
        if self._task:
            self._task.cancel()
        self.pub.close(0)
        if self.router is not None:
            self.router.close(0)
