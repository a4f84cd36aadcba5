"""Property-based fuzzing of the native transport with frame sequences, legal and not: whatever a
peer sends, the server neither raises nor hangs (a PING behind the sequence is answered, or the
connection ends with GOAWAY), every buffer stays within its limit, and a fresh connection is served
right after. In-process, so the buffers can be inspected; small limits, so the edges are reached."""
import asyncio
import struct
import threading

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epp.server.h2frames import (CONTINUATION, DATA, GOAWAY, HEADERS, PING, PRIORITY, RST_STREAM, SETTINGS,
                                 WINDOW_UPDATE, frame)
from epp.server.h2connection import Connection
from epp.server.h2grpc import GrpcMethodServer
from epp.server.h2limits import Limits
from testbed.ports import free_port

from .h2client import METHOD, H2Client, grpc_message

LIMITS = Limits(max_recv_msg_size=1024, max_header_list_size=1024, max_concurrent_streams=4,
                max_glitches_per_second=50, stream_window=65535, connection_window=4 * 65535,
                max_frame_size=16384, write_buffer_high=1 << 16)


class Echo:
    """One reply per message; b"later" in a body answers after a loop turn, b"bye" ends the call."""

    def __init__(self) -> None:
        self.closed = False

    def on_message(self, msg):
        body = msg.request_body.body
        if b"bye" in body:
            self.closed = True
        if b"later" in body:
            return self._later()
        return [pb.ProcessingResponse()]

    async def _later(self):
        await asyncio.sleep(0)
        return [pb.ProcessingResponse()]

    def close(self) -> None:
        self.closed = True


class InProcess:
    def __init__(self) -> None:
        self.errors: list = []
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda loop, ctx: self.errors.append(ctx))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = free_port()
        self.broken: list[str] = []
        self.srv = GrpcMethodServer(METHOD, Echo, pb.ProcessingRequest, LIMITS)
        asyncio.run_coroutine_threadsafe(self.srv.start("127.0.0.1", self.port), self.loop).result(5)

    def check(self, c) -> None:
        """Records the limits a connection breaks; run after each of its reads."""
        lim = LIMITS
        if len(c.buf) > lim.max_frame_size + 9:
            self.broken.append(f"read buffer {len(c.buf)}")
        if len(c.header_block) > lim.header_block_cap:
            self.broken.append(f"header block {len(c.header_block)}")
        if len(c.streams) + c.orphans > lim.max_concurrent_streams:
            self.broken.append(f"{len(c.streams)} streams")
        if c.recv_unacked > lim.connection_window:
            self.broken.append("connection window")
        for s in c.streams.values():
            if len(s.buf) > lim.max_recv_msg_size + 5 or s.recv_unacked > lim.stream_window:
                self.broken.append(f"stream {s.sid}: buffer {len(s.buf)}, unacked {s.recv_unacked}")

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.srv.stop(0), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def server():
    s = InProcess()
    read = Connection.data_received

    def checked(conn, data):
        read(conn, data)
        s.check(conn)
    Connection.data_received = checked
    yield s
    Connection.data_received = read
    s.close()


SIDS = st.sampled_from([1, 1, 1, 3, 3, 3, 5, 0, 2, 7, (1 << 31) - 1])
BODIES = st.sampled_from([b"hi", b"later", b"bye", b"later bye", b"x" * 2000])


def messages():
    valid = BODIES.map(lambda b: grpc_message(pb.ProcessingRequest(request_body=pb.HttpBody(body=b)).SerializeToString()))
    return st.one_of(
        valid,
        st.lists(valid, min_size=2, max_size=4).map(b"".join),
        valid.flatmap(lambda m: st.integers(1, len(m) - 1).map(lambda n: m[:n])),          # a message cut short
        st.sampled_from([b"\xff\xff\xff\xff", b"\x0a\x05ab"]).map(grpc_message),             # not protobuf
        st.just(grpc_message(b"\xff\xff\xff\xff")),
        st.integers(1025, 1 << 30).map(lambda n: struct.pack(">BI", 0, n)),               # over the limit
        st.just(struct.pack(">BI", 1, 3) + b"abc"),                                       # compressed
        st.binary(max_size=64),
        st.just(struct.pack(">BI", 0, 1000) + b"\x00" * 16000))                          # window-sized


CONTROL = st.one_of(
    st.tuples(st.just("headers"), SIDS, st.sampled_from([4, 4, 5, 0, 1, 0x24, 0x0C]),
              st.sampled_from(["ok", "bad path", "big", "huge"])),
    st.tuples(st.just("continuation"), SIDS, st.sampled_from([0, 4]), st.sampled_from(["ok", "junk", "empty", "big"])),
    st.tuples(st.just("data"), SIDS, st.sampled_from([0, 1, 8, 9]), messages()),
    st.tuples(st.just("raw"), st.sampled_from([RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, PRIORITY, 10, 200]),
              st.sampled_from([0, 1]), SIDS, st.binary(max_size=16)),
    st.tuples(st.just("settings"), st.lists(st.tuples(st.integers(0, 8), st.sampled_from(
        [0, 1, 2, 16384, 65535, 1 << 20, (1 << 31) - 1, 1 << 31, (1 << 24)])), max_size=4)),
    st.tuples(st.just("window"), SIDS, st.sampled_from([0, 1, 65535, 1 << 30, (1 << 31) - 1])),
    st.tuples(st.just("rst"), SIDS),
    st.tuples(st.just("ping"), st.sampled_from([0, 1])),
    st.tuples(st.just("oversized frame"), SIDS),
    st.tuples(st.just("flood"), st.sampled_from(["settings", "empty data", "resets", "pings"])),
)


@st.composite
def call(draw, sid: int):
    """One stream's frames in order: HEADERS, maybe CONTINUATIONs (maybe never ended), DATA."""
    what = draw(st.sampled_from(["ok", "ok", "ok", "bad path", "big", "huge"]))
    conts = draw(st.lists(st.sampled_from(["ok", "junk", "empty", "big"]), max_size=3))
    unended = draw(st.booleans()) if conts else False
    out = [("headers", sid, 0 if conts else 4, what)]
    out += [("continuation", sid, 4 if k == len(conts) - 1 and not unended else 0, p) for k, p in enumerate(conts)]
    datas = draw(st.lists(messages(), max_size=5))
    half_close = draw(st.booleans())
    out += [("data", sid, 1 if half_close and k == len(datas) - 1 else 0, m) for k, m in enumerate(datas)]
    return out


@st.composite
def sequences(draw):
    """Calls on rising stream ids (sometimes an old one again), control frames between them, and
    more DATA for calls already open."""
    out, sid = [], 1
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["call", "call", "call", "control", "more", "window 0"]))
        if kind == "call":
            if draw(st.integers(0, 9)) == 0 and sid > 1:
                sid -= 2
            out += draw(call(sid))
            sid += 2
        elif kind == "more" and sid > 1:
            target = draw(st.integers(0, sid // 2 - 1)) * 2 + 1
            out += [("data", target, draw(st.sampled_from([0, 1])), m) for m in draw(st.lists(messages(), max_size=4))]
        elif kind == "window 0":
            out.append(("settings", [(4, 0)]))   # our replies stall: windows must hold what arrives
        else:
            out.append(draw(CONTROL))
    return out


def build(c: H2Client, f) -> bytes:
    kind = f[0]
    if kind == "headers":
        _, sid, flags, what = f
        extra = {"ok": [], "bad path": [], "big": [(f"x-{i}", "v" * 30) for i in range(40)],
                 "huge": [(f"x-{i}", "v" * 500) for i in range(8)]}[what]
        block = c.header_block("/nope" if what == "bad path" else METHOD, extra)
        if what == "huge":
            block += block * 3        # past twice the list limit, as bytes
        if flags & 0x8:
            block = b"\x03" + block + b"\x00\x00\x00"
        if flags & 0x20:
            block = b"\x00\x00\x00\x00\x10" + block
        return frame(HEADERS, flags, sid, block)
    if kind == "continuation":
        _, sid, flags, what = f
        payload = {"ok": c.enc.encode([("x-more", "1")]), "junk": b"\xff\xff\xff\xff", "empty": b"",
                   "big": b"\x40" * 1500}[what]
        return frame(CONTINUATION, flags, sid, payload)
    if kind == "data":
        return frame(DATA, f[2], f[1], (b"\x02" + f[3] + b"\x00\x00") if f[2] & 8 else f[3])
    if kind == "raw":
        return frame(f[1], f[2], f[3], f[4])
    if kind == "settings":
        return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v & 0xFFFFFFFF) for k, v in f[1]))
    if kind == "window":
        return frame(WINDOW_UPDATE, 0, f[1], struct.pack(">I", f[2]))
    if kind == "rst":
        return frame(RST_STREAM, 0, f[1], struct.pack(">I", 8))
    if kind == "ping":
        return frame(PING, f[1], 0, b"12345678")
    if kind == "oversized frame":
        return frame(DATA, 0, f[1], b"\x00" * (LIMITS.max_frame_size + 1))
    return {"settings": frame(SETTINGS, 0, 0) * 200, "empty data": frame(DATA, 0, 1, b"") * 200,
            "resets": b"".join(frame(HEADERS, 5, s, c.enc.encode([(":path", METHOD)]))
                               + frame(RST_STREAM, 0, s, struct.pack(">I", 8)) for s in range(1001, 1401, 2)),
            "pings": frame(PING, 0, 0, b"pingpong") * 10}[f[1]]


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(sequences())
def test_any_frame_sequence(server, frames):
    c = H2Client(server.port, timeout=5)
    try:
        for f in frames:
            if not c.send(build(c, f)):
                break
        c.send(frame(PING, 0, 0, b"barrier!"))
        # answered in order, or the connection ended: never silence
        assert c.pump(lambda: b"barrier!" in c.ping_acks or c.goaway is not None or c.closed)
    finally:
        c.close()
    assert server.errors == [] and server.broken == []
    fresh = H2Client(server.port, timeout=5)
    try:
        sid = fresh.open(message=pb.ProcessingRequest(request_body=pb.HttpBody(body=b"hi")).SerializeToString(),
                         end=True)
        call = fresh.call(sid)
        assert call.status == 0 and len(call.replies) == 1
    finally:
        fresh.close()
