"""Ingestion of vLLM's KV-cache events (ZMQ + msgpack), handed to a sink; no scheduling logic here.

Wire format (vLLM `vllm/distributed/kv_events.py`):
  * one ZMQ message per engine step with cache changes: [topic, seq (8 bytes, big-endian), payload]; some
    publishers (and tests) send [topic, payload] without a sequence number, then there is no gap detection;
  * topic `kv@<ip:port>@<model>` names the pod (the address is canonicalised, IPv6 as `[..]:port`);
  * payload: msgpack of an `EventBatch` struct: `[ts, events]` (older vLLM), `[ts, events, dp_rank]`, or a map
    `{"ts", "events", "data_parallel_rank"}`; unknown trailing elements / keys are ignored;
  * events: positional arrays, tag first (vLLM with msgspec `array_like=True`, omit_defaults drops trailing
    fields left at their defaults), or tagged maps `{"type": "BlockStored", ...}` (vLLM after PR #42892 dropped
    `array_like` from the event structs):
      ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size(, lora_id, medium, lora_name,
       extra_keys, group_idx, kv_cache_spec_kind, kv_cache_spec_sliding_window, ...)]
      ["BlockRemoved", block_hashes(, medium, group_idx, ...)]
      ["AllBlocksCleared"]
    Events with an unknown tag are counted and skipped;
  * block hashes: ints (uint64; a signed int64 on the wire is taken as its two's complement) or bytes (vLLM's
    sha256-based hashes: the last 8 bytes, big-endian, are the key).

Replay (vLLM's ZmqEventPublisher with `replay_endpoint`): a DEALER sends [b"", start_seq (8 bytes)] to the
pod's ROUTER, which answers [b"", seq, payload] for every buffered batch from start_seq on, then
[b"", -1 (8 bytes, signed), b""].
"""
from __future__ import annotations

import asyncio
import logging
from array import array
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import zmq
import zmq.asyncio

from ..kvcache.block_hash import U64
from ..kvcache.block_hash import block_hash_key as _block_key
from .address import canonical

log = logging.getLogger("epp.datalayer.kv_events")

END_SEQ = -1


class KVEventDecodeError(ValueError):
    """A payload that is not a vLLM KV-event batch (the subscriber counts and drops it)."""


# ---- events ---------------------------------------------------------------------------------------------
@dataclass(slots=True)
class BlockStored:
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: Any = None          # per-block extra hash inputs (mm ids, cache_salt, ...), as sent
    group_idx: int | None = None    # KV-cache group (hybrid attention models)


@dataclass(slots=True)
class BlockRemoved:
    block_hashes: list[int]
    medium: str | None = None
    group_idx: int | None = None


@dataclass(slots=True)
class AllBlocksCleared:
    pass


@dataclass(slots=True)
class EventBatch:
    ts: float
    events: list
    dp_rank: int | None = None
    unknown: int = 0                # events skipped for an unknown tag


# ---- decoding -------------------------------------------------------------------------------------------
def block_hash_key(h: Any) -> int:
    """vLLM's block hash as a uint64 key (kvcache.block_hash); a malformed one is a decode error."""
    if type(h) is int:          # the common case, without the call
        return h & U64
    try:
        return _block_key(h)
    except (TypeError, ValueError) as e:
        raise KVEventDecodeError(str(e)) from None


def _hashes(v: Any, what: str) -> list[int]:
    if type(v) is not list:
        raise KVEventDecodeError(f"{what} must be an array, got {type(v).__name__}")
    return [block_hash_key(h) for h in v]


def _opt(v: Any, typ: type, what: str):
    if v is None or type(v) is typ:
        return v
    raise KVEventDecodeError(f"{what} must be {typ.__name__} or nil, got {type(v).__name__}")


def _tokens(v: Any) -> list[int]:
    if type(v) is not list:
        raise KVEventDecodeError(f"token_ids must be an array, got {type(v).__name__}")
    try:
        array("I", v)      # C-speed check that every id is an int in uint32 (llm-d keeps them as uint32 too)
    except (TypeError, OverflowError) as exc:
        raise KVEventDecodeError(f"token_ids must be uint32 ints: {exc}") from None
    return v


def _stored(hashes, parent, tokens, block_size, lora_id, medium, lora_name, extra_keys, group_idx) -> BlockStored:
    if type(block_size) is not int or block_size <= 0:
        raise KVEventDecodeError(f"block_size must be a positive int, got {block_size!r}")
    return BlockStored(_hashes(hashes, "block_hashes"),
                       None if parent is None else block_hash_key(parent),
                       _tokens(tokens), block_size,
                       _opt(lora_id, int, "lora_id"), _opt(medium, str, "medium"),
                       _opt(lora_name, str, "lora_name"), extra_keys, _opt(group_idx, int, "group_idx"))


def _removed(hashes, medium, group_idx) -> BlockRemoved:
    return BlockRemoved(_hashes(hashes, "block_hashes"), _opt(medium, str, "medium"),
                        _opt(group_idx, int, "group_idx"))


def _from_array(ev: list):
    tag = ev[0]
    n = len(ev)
    if tag == "BlockStored":
        if n < 5:
            raise KVEventDecodeError(f"BlockStored needs at least 4 fields, got {n - 1}")
        return _stored(ev[1], ev[2], ev[3], ev[4],
                       ev[5] if n > 5 else None, ev[6] if n > 6 else None, ev[7] if n > 7 else None,
                       ev[8] if n > 8 else None, ev[9] if n > 9 else None)
    if tag == "BlockRemoved":
        if n < 2:
            raise KVEventDecodeError("BlockRemoved without block_hashes")
        return _removed(ev[1], ev[2] if n > 2 else None, ev[3] if n > 3 else None)
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    return None


def _from_map(ev: dict):
    tag = ev.get("type")
    if tag == "BlockStored":
        try:
            hashes, tokens, bs = ev["block_hashes"], ev["token_ids"], ev["block_size"]
        except KeyError as exc:
            raise KVEventDecodeError(f"BlockStored map without {exc.args[0]!r}") from None
        g = ev.get
        return _stored(hashes, g("parent_block_hash"), tokens, bs, g("lora_id"), g("medium"), g("lora_name"),
                       g("extra_keys"), g("group_idx"))
    if tag == "BlockRemoved":
        if "block_hashes" not in ev:
            raise KVEventDecodeError("BlockRemoved map without 'block_hashes'")
        return _removed(ev["block_hashes"], ev.get("medium"), ev.get("group_idx"))
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    if type(tag) is not str:
        raise KVEventDecodeError(f"event map without a string 'type', got {type(tag).__name__}")
    return None


def decode_batch(payload: bytes) -> EventBatch:
    """Decodes one msgpack payload. Raises KVEventDecodeError with a message saying what is wrong."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:     # ExtraData, FormatError, StackError, ValueError, UnicodeDecodeError, ...
        raise KVEventDecodeError(f"payload is not msgpack: {type(exc).__name__}: {exc}") from None
    if type(obj) is list:
        if len(obj) < 2:
            raise KVEventDecodeError(f"event batch must be [ts, events(, dp_rank)], got {len(obj)} element(s)")
        ts, events = obj[0], obj[1]
        dp = obj[2] if len(obj) > 2 else None
    elif type(obj) is dict:
        if "ts" not in obj or "events" not in obj:
            raise KVEventDecodeError("event batch map without 'ts' and 'events'")
        ts, events, dp = obj["ts"], obj["events"], obj.get("data_parallel_rank")
    else:
        raise KVEventDecodeError(f"event batch must be an array or a map, got {type(obj).__name__}")
    if type(ts) is not float and type(ts) is not int:
        raise KVEventDecodeError(f"batch ts must be a number, got {type(ts).__name__}")
    if type(events) is not list:
        raise KVEventDecodeError(f"batch events must be an array, got {type(events).__name__}")
    if dp is not None and type(dp) is not int:
        raise KVEventDecodeError(f"data_parallel_rank must be an int or nil, got {type(dp).__name__}")
    out = []
    unknown = 0
    for i, ev in enumerate(events):
        try:
            if type(ev) is list:
                if not ev:
                    raise KVEventDecodeError("empty event array")
                if type(ev[0]) is not str:
                    raise KVEventDecodeError(f"event tag must be a string, got {type(ev[0]).__name__}")
                e = _from_array(ev)
            elif type(ev) is dict:
                e = _from_map(ev)
            else:
                raise KVEventDecodeError(f"event must be an array or a map, got {type(ev).__name__}")
        except KVEventDecodeError as exc:
            raise KVEventDecodeError(f"event {i}: {exc}") from None
        if e is None:
            unknown += 1
        else:
            out.append(e)
    return EventBatch(float(ts), out, dp, unknown)


def parse_topic(topic: bytes | str) -> tuple[str | None, str]:
    """`kv@<ip:port>@<model>` -> (canonical address or None when it is not an address, model or "")."""
    t = topic.decode("utf-8", "replace") if isinstance(topic, (bytes, bytearray)) else topic
    parts = t.split("@", 2)
    if len(parts) < 2:
        return None, ""
    try:
        addr = canonical(parts[1])
    except ValueError:
        addr = None
    return addr, parts[2] if len(parts) == 3 else ""


# ---- subscriber -----------------------------------------------------------------------------------------
class KVEventSink(Protocol):
    def apply(self, address: str, model: str, batch: EventBatch) -> None: ...

    def reset(self, address: str) -> None: ...


COUNTERS = ("messages", "decode_errors", "gaps", "replays", "replayed", "replay_failures", "resets", "duplicates",
            "restarts", "unknown_events", "sink_errors", "bad_frames", "bad_topics", "ignored")


class Counters:
    """messages: ZMQ messages received; decode_errors: payloads dropped; gaps: sequence gaps seen; replays:
    replay requests; replayed: batches applied from a replay; replay_failures: replays that did not close the
    gap; resets: sink.reset calls; duplicates: batches already applied; restarts: sequence went backwards (a
    new publisher); unknown_events: events with an unknown tag; sink_errors: sink.apply raised; bad_frames:
    messages not [topic, seq, payload] / [topic, payload]; bad_topics: topics without an address (central
    mode); ignored: messages for an endpoint no longer subscribed."""
    __slots__ = COUNTERS

    def __init__(self):
        for n in COUNTERS:
            setattr(self, n, 0)

    def as_dict(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in COUNTERS}

    def __repr__(self):
        return f"Counters({', '.join(f'{k}={v}' for k, v in self.as_dict().items() if v)})"


class _Stream:
    """Sequence state of one endpoint."""
    __slots__ = ("address", "model", "replay_endpoint", "applied", "live_last", "replaying", "replay_target",
                 "replay_task", "pending", "overflowed", "counters", "removed")

    def __init__(self, address: str, replay_endpoint: str | None):
        self.address = address
        self.model = ""
        self.replay_endpoint = replay_endpoint
        self.applied: int | None = None     # last sequence number applied (live or replayed)
        self.live_last: int | None = None   # last sequence number seen on the live stream
        self.replaying = False
        self.replay_target = 0
        self.replay_task: asyncio.Task | None = None
        self.pending: deque = deque()       # live messages held while a replay runs
        self.overflowed = False
        self.counters = Counters()
        self.removed = False


class _Pod:
    __slots__ = ("pub_endpoint", "socket", "task")

    def __init__(self, pub_endpoint: str):
        self.pub_endpoint = pub_endpoint
        self.socket = None
        self.task: asyncio.Task | None = None


_YIELD_EVERY = 16      # an asyncio zmq socket with queued messages returns done futures: yield now and then


class KVEventSubscriber:
    """Receives vLLM KV events and hands decoded batches to `sink`, one message at a time, on the caller's
    event loop.

    Central mode (`bind`, e.g. "tcp://*:5557"): one bound SUB that every pod's PUB connects to; the endpoint
    is read from the topic. Pod mode (`add_endpoint`): a SUB per pod connected to its PUB; the endpoint is
    the one given (the topic only names the model), and `remove_endpoint` closes that socket so nothing of
    that pod arrives afterwards. Both can be used together. In central mode a removed endpoint that keeps
    publishing comes back with its next message (it still holds those blocks).

    Per endpoint: the first sequence number sets the baseline; a gap is closed from the pod's replay ROUTER
    when one is known, otherwise (or when the replay fails) the endpoint is reset in the sink and tracking
    continues from the new sequence number; a batch already applied is ignored; a sequence number below the
    last one seen live means a new publisher (vLLM restarted): reset and new baseline.

    topic_filter: ZMQ subscription prefix (vLLM's default topic is "", llm-d's convention "kv@<ip:port>@<model>";
    pass "" to take every topic). replay_timeout: seconds to wait for each step of a replay (the request, then
    each reply); a replay that stalls that long counts as failed. rcvhwm: receive high-water mark per
    connection (ZMQ drops beyond it, which shows up as a gap). max_pending: live messages held per endpoint
    while its replay runs; beyond that the replay is abandoned and the endpoint reset.
    Sequence numbers are tracked per endpoint address: with data parallelism each DP rank publishes its own
    sequence (vLLM offsets the port by the rank), so give each rank's publisher a distinct topic address.
    """

    def __init__(self, sink: KVEventSink, *, bind: str | None = None, topic_filter: str = "kv@",
                 replay_timeout: float = 1.0, rcvhwm: int = 10_000, max_pending: int = 10_000,
                 context: zmq.asyncio.Context | None = None):
        self.sink = sink
        self.bind = bind
        self.topic_filter = topic_filter.encode()
        self.replay_timeout = replay_timeout
        self.rcvhwm = rcvhwm
        self.max_pending = max_pending
        self.counters = Counters()
        self.bound_endpoint: str | None = None
        self._own_ctx = context is None
        self._ctx = context
        self._central = None
        self._central_task: asyncio.Task | None = None
        self._streams: dict[str, _Stream] = {}
        self._pods: dict[str, _Pod] = {}
        self._replay_endpoints: dict[str, str] = {}
        self._topics: dict[bytes, tuple[str | None, str]] = {}
        self._started = False
        self._stopped = False

    def endpoint_counters(self, address: str) -> dict[str, int] | None:
        s = self._streams.get(canonical(address))
        return s.counters.as_dict() if s else None

    def endpoints(self) -> list[str]:
        return sorted(self._streams)

    def status(self) -> dict[str, dict]:
        """Per endpoint subscribed to or heard from: its publisher as seen here (for the pool view)."""
        out = {}
        for addr, s in self._streams.items():
            c = s.counters
            out[addr] = {"messages": c.messages, "gaps": c.gaps, "resets": c.resets, "replaying": s.replaying,
                         "last_seq": s.applied}
        for addr, pod in self._pods.items():
            st = out.setdefault(addr, {"messages": 0, "gaps": 0, "resets": 0, "replaying": False, "last_seq": None})
            st["publisher"] = pod.pub_endpoint
        return out

    def publishers(self) -> int:
        """Endpoints heard from at least once: fewer than the pool means some pods publish nowhere
        (a wrong --kv-events-config endpoint) or are not connected yet."""
        return sum(1 for s in self._streams.values() if s.counters.messages)

    # ---- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Binds (central mode) and connects the endpoints added so far; call on the running event loop."""
        if self._started:
            raise RuntimeError("KVEventSubscriber already started")
        loop = asyncio.get_running_loop()
        if self._ctx is None:
            self._ctx = zmq.asyncio.Context()
        if self.bind:
            sock = self._sub_socket()
            try:
                sock.bind(self.bind)
            except zmq.ZMQError:
                sock.close(0)
                raise
            self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self._central = sock
            self._central_task = loop.create_task(self._read(sock, None), name="kv-events-central")
        self._started = True
        for addr, pod in self._pods.items():
            self._connect(addr, pod)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        tasks = [t for t in [self._central_task, *(p.task for p in self._pods.values()),
                             *(s.replay_task for s in self._streams.values())] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._central is not None:
            self._central.close(0)
        for p in self._pods.values():
            if p.socket is not None:
                p.socket.close(0)
        if self._own_ctx and self._ctx is not None:
            self._ctx.destroy(0)

    # ---- endpoints ------------------------------------------------------------------------------------
    def add_endpoint(self, address: str, pub_endpoint: str | None, replay_endpoint: str | None = None) -> None:
        """Pod mode: subscribe to the pod's PUB at `pub_endpoint` and remember its replay ROUTER. With
        `pub_endpoint=None` (central mode) only the replay endpoint is remembered for that address."""
        if self._stopped:
            raise RuntimeError("KVEventSubscriber stopped")
        addr = canonical(address)
        pod = self._pods.get(addr)
        if pod is not None and pod.pub_endpoint != pub_endpoint:
            self.remove_endpoint(addr)      # another publisher: what we hold for the old one is stale
            pod = None
        if replay_endpoint:
            self._replay_endpoints[addr] = replay_endpoint
        else:
            self._replay_endpoints.pop(addr, None)
        stream = self._streams.get(addr)
        if stream is not None:
            stream.replay_endpoint = replay_endpoint or None
        elif pub_endpoint:
            self._streams[addr] = _Stream(addr, replay_endpoint or None)
        if pub_endpoint and pod is None:
            pod = self._pods[addr] = _Pod(pub_endpoint)
            if self._started:
                self._connect(addr, pod)

    def remove_endpoint(self, address: str) -> None:
        """Unsubscribes from the pod (pod mode), forgets its sequence state and resets it in the sink."""
        addr = canonical(address)
        pod = self._pods.pop(addr, None)
        if pod is not None:
            if pod.task is not None:
                pod.task.cancel()
            if pod.socket is not None:
                pod.socket.close(0)
        self._replay_endpoints.pop(addr, None)
        stream = self._streams.pop(addr, None)
        if stream is not None:
            stream.removed = True
            if stream.replay_task is not None:
                stream.replay_task.cancel()
        self._reset(addr, stream)

    def _sub_socket(self):
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, self.topic_filter)
        return sock

    def _connect(self, addr: str, pod: _Pod) -> None:
        sock = self._sub_socket()
        try:
            sock.connect(pod.pub_endpoint)
        except zmq.ZMQError:
            sock.close(0)
            raise
        pod.socket = sock
        pod.task = asyncio.get_running_loop().create_task(self._read(sock, addr), name=f"kv-events {addr}")

    # ---- receiving ------------------------------------------------------------------------------------
    async def _read(self, sock, fixed: str | None) -> None:
        n = 0
        while True:
            try:
                frames = await sock.recv_multipart()
            except zmq.ZMQError as exc:
                if sock.closed or exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
                    return
                log.warning("kv events: receive failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            try:
                self._on_message(frames, fixed)
            except Exception:      # never let one message stop the reader
                log.exception("kv events: message handling failed")
            n += 1
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

    def _topic(self, topic: bytes) -> tuple[str | None, str]:
        got = self._topics.get(topic)
        if got is None:
            if len(self._topics) >= 4096:
                self._topics.clear()
            got = self._topics[topic] = parse_topic(topic)
        return got

    def _on_message(self, frames: list[bytes], fixed: str | None) -> None:
        c = self.counters
        c.messages += 1
        if len(frames) == 3:
            topic, seq_b, payload = frames
            if len(seq_b) != 8:
                c.bad_frames += 1
                return
            seq = int.from_bytes(seq_b, "big")
        elif len(frames) == 2:
            topic, payload = frames
            seq = None
        else:
            c.bad_frames += 1
            return
        addr, model = self._topic(topic)
        if fixed is not None:
            stream = self._streams.get(fixed)
            if stream is None or stream.removed:
                c.ignored += 1
                return
        else:
            if addr is None:
                c.bad_topics += 1
                return
            stream = self._streams.get(addr)
            if stream is None:
                stream = self._streams[addr] = _Stream(addr, self._replay_endpoints.get(addr))
        stream.counters.messages += 1
        stream.model = model
        if stream.replaying:
            if len(stream.pending) >= self.max_pending:
                stream.pending.clear()
                stream.overflowed = True
            if not stream.overflowed:
                stream.pending.append((seq, payload, model))
            return
        self._process(stream, seq, payload, model)

    def _process(self, s: _Stream, seq: int | None, payload: bytes, model: str) -> None:
        if seq is None:                                  # no sequence number: no gap detection
            self._apply(s, model, payload)
            return
        last = s.applied
        if last is None:                                 # baseline
            s.applied = s.live_last = seq
            self._apply(s, model, payload)
            return
        if seq == last + 1:
            s.applied = s.live_last = seq
            self._apply(s, model, payload)
            return
        if seq <= last:
            if s.live_last is not None and seq < s.live_last:
                # the live stream of one publisher only goes up: this is a new publisher (vLLM restarted)
                self.counters.restarts += 1
                s.counters.restarts += 1
                log.info("kv events: %s sequence went back from %d to %d: publisher restarted, resetting",
                         s.address, s.live_last, seq)
                self._reset(s.address, s)
                s.applied = s.live_last = seq
                self._apply(s, model, payload)
            else:                                        # already applied (from a replay) or resent
                self.counters.duplicates += 1
                s.counters.duplicates += 1
                s.live_last = seq
            return
        self.counters.gaps += 1
        s.counters.gaps += 1
        if s.replay_endpoint:
            s.replaying = True
            s.overflowed = False
            s.replay_target = seq
            s.pending.appendleft((seq, payload, model))
            s.replay_task = asyncio.get_running_loop().create_task(
                self._replay(s, last + 1, model), name=f"kv-events replay {s.address}")
            return
        log.info("kv events: %s lost batches %d..%d and has no replay endpoint: resetting", s.address, last + 1,
                 seq - 1)
        self._reset(s.address, s)
        s.applied = s.live_last = seq
        self._apply(s, model, payload)

    def _apply(self, s: _Stream, model: str, payload: bytes) -> bool:
        try:
            batch = decode_batch(payload)
        except KVEventDecodeError as exc:
            self.counters.decode_errors += 1
            s.counters.decode_errors += 1
            if s.counters.decode_errors == 1 or log.isEnabledFor(logging.DEBUG):
                log.warning("kv events: dropping a batch from %s: %s", s.address, exc)
            return False
        if batch.unknown:
            self.counters.unknown_events += batch.unknown
            s.counters.unknown_events += batch.unknown
        try:
            self.sink.apply(s.address, model, batch)
        except Exception:
            self.counters.sink_errors += 1
            s.counters.sink_errors += 1
            log.exception("kv events: sink.apply failed for %s", s.address)
        return True

    def _reset(self, address: str, s: _Stream | None) -> None:
        self.counters.resets += 1
        if s is not None:
            s.counters.resets += 1
        try:
            self.sink.reset(address)
        except Exception:
            self.counters.sink_errors += 1
            log.exception("kv events: sink.reset failed for %s", address)

    # ---- replay ---------------------------------------------------------------------------------------
    async def _replay(self, s: _Stream, start: int, model: str) -> None:
        self.counters.replays += 1
        s.counters.replays += 1
        ok = False
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(s.replay_endpoint)
            await asyncio.wait_for(sock.send_multipart([b"", start.to_bytes(8, "big")]), self.replay_timeout)
            n = 0
            while True:
                frames = await asyncio.wait_for(sock.recv_multipart(), self.replay_timeout)
                if len(frames) == 3 and frames[0] == b"":
                    frames = frames[1:]
                if len(frames) != 2 or len(frames[0]) != 8:
                    raise KVEventDecodeError(f"replay reply is not [b'', seq, payload]: {len(frames)} frame(s)")
                rseq = int.from_bytes(frames[0], "big", signed=True)
                if rseq == END_SEQ:
                    break
                if s.removed:
                    return
                if s.overflowed:          # live messages were lost meanwhile: this replay cannot fix it
                    break
                if rseq <= s.applied:
                    continue
                if rseq != s.applied + 1:
                    raise KVEventDecodeError(f"replay starts at {rseq}, {s.applied + 1} is no longer buffered")
                s.applied = rseq
                self._apply(s, model, frames[1])
                self.counters.replayed += 1
                s.counters.replayed += 1
                n += 1
                if n % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            ok = s.applied >= s.replay_target - 1
            if not ok:
                log.info("kv events: replay from %s ended at %d, before %d", s.address, s.applied,
                         s.replay_target - 1)
        except asyncio.CancelledError:
            raise
        except (asyncio.TimeoutError, zmq.ZMQError, KVEventDecodeError) as exc:
            log.info("kv events: replay from %s (%s) failed: %s", s.address, s.replay_endpoint,
                     exc or type(exc).__name__)
        finally:
            sock.close(0)
            if s.replay_task is asyncio.current_task():
                s.replay_task = None
        if s.removed:
            return
        if not ok or s.overflowed:
            self.counters.replay_failures += 1
            s.counters.replay_failures += 1
            self._reset(s.address, s)
            s.applied = s.live_last = None         # the next held message is the new baseline
        s.replaying = False
        s.overflowed = False
        self._drain(s)

    def _drain(self, s: _Stream) -> None:
        while s.pending and not s.replaying and not s.removed:
            seq, payload, model = s.pending.popleft()
            self._process(s, seq, payload, model)


def _counter_property(name: str) -> property:
    return property(lambda self: getattr(self.counters, name), doc=f"total {name} (see Counters)")


for _name in COUNTERS:      # sub.messages, sub.gaps, ... for metrics
    setattr(KVEventSubscriber, _name, _counter_property(_name))
del _name
