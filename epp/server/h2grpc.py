"""A lean HTTP/2 server for exactly one gRPC method: ext_proc's bidirectional Process stream.

Why not grpcio here: measured on this project's benchmark, grpc.aio spent about 1 ms of CPU per
ext_proc stream in its own machinery (a poller thread handing each event to the event loop, a task
and several awaits per RPC), four to five times the EPP's own work per request. This server parses
frames in `data_received` and hands each message synchronously to the request's state machine, so a
request costs no task, no thread and no await; replies of one read go out in one write.

Scope, deliberately small: HTTP/2 with prior knowledge (h2c) or over TLS with ALPN h2, as Envoy's
gRPC client speaks it; HPACK decoding by the `hpack` library (responses use stateless literal
encodings); flow control both ways; PING, SETTINGS, RST_STREAM and GOAWAY; graceful drain. gRPC
message compression is not negotiated (we answer `grpc-accept-encoding: identity`). Anything else
the peer sends that HTTP/2 forbids ends the connection with GOAWAY(PROTOCOL_ERROR).
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from typing import Callable, Protocol

from hpack import Decoder
from hpack.exceptions import HPACKError

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0, 1, 3, 6, 7, 8
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT, S_INITIAL_WINDOW, S_MAX_FRAME, S_MAX_HEADER_LIST = range(1, 7)

GRPC_OK, GRPC_UNIMPLEMENTED, GRPC_RESOURCE_EXHAUSTED, GRPC_INTERNAL = 0, 12, 8, 13

_FRAME = struct.Struct(">BHBBI")          # length (24 bits as 8 + 16), type, flags, stream id
_GRPC_PREFIX = struct.Struct(">BI")       # compressed flag, message length
_SETTING = struct.Struct(">HI")

RECV_WINDOW = 1 << 30                     # what we let the peer send before it must wait for us
MAX_FRAME_IN = 1 << 20                    # larger DATA frames mean fewer frames for big bodies
MAX_WINDOW = (1 << 31) - 1


def _int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """HPACK integer with an N-bit prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header as an HPACK literal without indexing: no dynamic-table state, so bytes can be reused."""
    return b"\x00" + _int(len(name), 7) + name + _int(len(value), 7) + value


RESPONSE_HEADERS = (literal(b":status", b"200") + literal(b"content-type", b"application/grpc")
                    + literal(b"grpc-accept-encoding", b"identity"))
OK_TRAILERS = literal(b"grpc-status", b"0")


def _frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME.pack(n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def _error_trailers(code: int, message: str) -> bytes:
    msg = "".join(c if 0x20 <= ord(c) < 0x7F and c != "%" else "".join(f"%{b:02X}" for b in c.encode())
                  for c in message)
    return literal(b"grpc-status", str(code).encode()) + literal(b"grpc-message", msg.encode())


class Handler(Protocol):
    """One gRPC call. on_message returns the replies to send, or an awaitable of them (the call's
    later messages wait until it is done); `closed` ends our side early. The server sets `push`: a
    function that sends replies the handler produces unasked (e.g. ending the call early)."""

    closed: bool
    push: Callable[[list], None] | None

    def on_message(self, msg): ...

    def close(self) -> None: ...


class _Stream:
    __slots__ = ("sid", "handler", "buf", "send_window", "pending", "headers_sent", "trailers",
                 "remote_done", "local_done", "recv_unacked", "waiting", "backlog")

    def __init__(self, sid: int, handler: Handler | None, send_window: int) -> None:
        self.sid = sid
        self.handler = handler
        self.buf = bytearray()
        self.send_window = send_window
        self.pending = bytearray()       # DATA payload waiting for flow-control window
        self.headers_sent = False
        self.trailers: bytes | None = None  # queued behind pending data
        self.remote_done = False
        self.local_done = False
        self.recv_unacked = 0
        self.waiting = False             # the handler is preparing replies asynchronously
        self.backlog: list = []          # messages that arrived meanwhile, in order


class GrpcMethodServer:
    """Serves `path` with handlers from `factory`; request and reply types are protobuf classes."""

    def __init__(self, path: str, factory: Callable[[], Handler], request_type, max_message: int) -> None:
        self.path = path.encode()
        self.factory = factory
        self.parse = request_type.FromString
        self.max_message = max_message
        self.connections: set[_Connection] = set()
        self.server: asyncio.base_events.Server | None = None
        self.draining = False

    @property
    def active_streams(self) -> int:
        return sum(len(c.streams) for c in self.connections)

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Connection(self), host, port, ssl=ssl_context,
                                               reuse_address=True, backlog=1024)

    async def stop(self, grace: float) -> None:
        """Refuse new connections and streams; let open streams finish for up to `grace` seconds."""
        self.draining = True
        if self.server is not None:
            self.server.close()
        for c in list(self.connections):
            c.goaway(NO_ERROR)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.active_streams and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for c in list(self.connections):
            c.abort()


class _Connection(asyncio.Protocol):
    def __init__(self, server: GrpcMethodServer) -> None:
        self.srv = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.preface_ok = False
        self.decoder = Decoder()
        self.decoder.max_header_list_size = 1 << 16
        self.streams: dict[int, _Stream] = {}
        self.last_sid = 0
        self.headers_sid = 0                  # a HEADERS block awaiting CONTINUATION
        self.headers_flags = 0
        self.header_block = bytearray()
        self.peer_max_frame = 16384
        self.peer_initial_window = 65535
        self.send_window = 65535              # connection-level window the peer gave us
        self.recv_unacked = 0
        self.blocked: set[int] = set()
        self.out: list[bytes] = []
        self.goaway_sent = False
        self.closed = False
        self.tasks: set[asyncio.Future] = set()   # handlers' replies being prepared

    # ---------------------------------------------------------------- connection life

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.srv.connections.add(self)
        if self.srv.draining:
            transport.close()
            return
        settings = b"".join(_SETTING.pack(k, v) for k, v in (
            (S_ENABLE_PUSH, 0), (S_INITIAL_WINDOW, RECV_WINDOW), (S_MAX_FRAME, MAX_FRAME_IN),
            (S_MAX_HEADER_LIST, 1 << 16)))
        transport.write(_frame(SETTINGS, 0, 0, settings)
                        + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", RECV_WINDOW - 65535)))

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.srv.connections.discard(self)
        streams, self.streams = self.streams, {}
        for st in streams.values():  # the peer is gone: every call on it is cancelled
            if st.handler is not None:
                st.handler.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def goaway(self, code: int) -> None:
        if not self.goaway_sent and self.transport is not None and not self.closed:
            self.goaway_sent = True
            self.transport.write(_frame(GOAWAY, 0, 0, struct.pack(">II", self.last_sid, code)))
            if not self.streams:
                self.transport.close()

    def _fail(self, code: int, why: str) -> None:
        log.warning("ext_proc connection error: %s", why)
        self.goaway(code)
        self.abort()

    # ---------------------------------------------------------------- reading

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        try:
            if not self.preface_ok:
                if len(buf) < len(PREFACE):
                    return
                if buf[:len(PREFACE)] != PREFACE:
                    self._fail(PROTOCOL_ERROR, "not an HTTP/2 client (bad connection preface)")
                    return
                del buf[:len(PREFACE)]
                self.preface_ok = True
            pos, end = 0, len(buf)
            while end - pos >= 9:
                hi, lo, ftype, flags, sid = _FRAME.unpack_from(buf, pos)
                length = (hi << 16) | lo
                if length > MAX_FRAME_IN:
                    self._fail(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                    return
                if end - pos - 9 < length:
                    break
                payload = memoryview(buf)[pos + 9:pos + 9 + length]
                try:
                    self._on_frame(ftype, flags, sid & 0x7FFFFFFF, payload)
                finally:
                    payload.release()
                pos += 9 + length
                if self.closed:
                    return
            del buf[:pos]
        except (ValueError, HPACKError, struct.error) as e:
            self._fail(PROTOCOL_ERROR, str(e) or type(e).__name__)
            return
        self._flush()

    def _on_frame(self, ftype: int, flags: int, sid: int, payload: memoryview) -> None:
        if self.headers_sid and ftype != CONTINUATION:
            raise ValueError("expected CONTINUATION")
        if ftype == DATA:
            self._data(flags, sid, payload)
        elif ftype == HEADERS:
            self._headers(flags, sid, payload)
        elif ftype == CONTINUATION:
            if sid != self.headers_sid or not sid:
                raise ValueError("CONTINUATION on the wrong stream")
            self.header_block += payload
            if flags & END_HEADERS:
                self._header_block_done()
        elif ftype == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif ftype == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif ftype == PING:
            if not flags & ACK:
                self.out.append(_frame(PING, ACK, 0, bytes(payload)))
        elif ftype == RST_STREAM:
            st = self.streams.pop(sid, None)
            self.blocked.discard(sid)
            if st is not None and st.handler is not None:
                st.handler.close()
        elif ftype == GOAWAY:
            self.goaway_sent = True  # the peer is leaving: answer what is open, accept nothing new
        elif ftype == PUSH_PROMISE:
            raise ValueError("PUSH_PROMISE from a client")
        # PRIORITY and unknown frame types are ignored, as HTTP/2 requires

    def _settings(self, payload: memoryview) -> None:
        if len(payload) % 6:
            raise ValueError("SETTINGS length")
        for i in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, i)
            if key == S_INITIAL_WINDOW:
                if value > MAX_WINDOW:
                    raise ValueError("INITIAL_WINDOW_SIZE too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for st in self.streams.values():
                    st.send_window += delta
            elif key == S_MAX_FRAME:
                if not 16384 <= value <= (1 << 24) - 1:
                    raise ValueError("MAX_FRAME_SIZE out of range")
                self.peer_max_frame = value
            elif key == S_HEADER_TABLE_SIZE:
                pass  # we never index, so the peer's table size does not constrain us
        self.out.append(_frame(SETTINGS, ACK, 0))
        self._unblock()

    def _window_update(self, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise ValueError("WINDOW_UPDATE length")
        inc = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
        if sid == 0:
            self.send_window += inc
        else:
            st = self.streams.get(sid)
            if st is None:
                return
            st.send_window += inc
        self._unblock()

    def _headers(self, flags: int, sid: int, payload: memoryview) -> None:
        if not sid or not sid & 1:
            raise ValueError("HEADERS on an invalid stream id")
        start, stop = 0, len(payload)
        if flags & PADDED:
            start, stop = 1, stop - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if stop < start:
            raise ValueError("HEADERS padding")
        self.headers_sid, self.headers_flags = sid, flags
        self.header_block = bytearray(payload[start:stop])
        if flags & END_HEADERS:
            self._header_block_done()

    def _header_block_done(self) -> None:
        sid, flags = self.headers_sid, self.headers_flags
        self.headers_sid = 0
        headers = self.decoder.decode(bytes(self.header_block), raw=True)
        self.header_block = bytearray()
        st = self.streams.get(sid)
        if st is not None:  # trailers: the client's half of the call is over
            if flags & END_STREAM:
                self._remote_end(st)
            return
        if sid <= self.last_sid:
            return  # a stream we already closed
        self.last_sid = sid
        if self.goaway_sent or self.srv.draining:
            self.out.append(_frame(RST_STREAM, 0, sid, struct.pack(">I", REFUSED_STREAM)))
            return
        path = next((v for k, v in headers if k == b":path"), b"")
        if path != self.srv.path:
            self.out.append(_frame(HEADERS, END_HEADERS | END_STREAM, sid, RESPONSE_HEADERS
                                   + _error_trailers(GRPC_UNIMPLEMENTED, f"unknown method {path.decode(errors='replace')}")))
            return
        st = self.streams[sid] = _Stream(sid, self.srv.factory(), self.peer_initial_window)
        st.handler.push = lambda replies, st=st: self._push(st, replies)
        if flags & END_STREAM:
            self._remote_end(st)

    def _data(self, flags: int, sid: int, payload: memoryview) -> None:
        n = len(payload)
        self.recv_unacked += n
        if self.recv_unacked >= RECV_WINDOW // 2:
            self.out.append(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.recv_unacked)))
            self.recv_unacked = 0
        st = self.streams.get(sid)
        if st is None:
            return  # a stream we have finished (or reset): its data only counts for flow control
        st.recv_unacked += n
        if st.recv_unacked >= RECV_WINDOW // 2:
            self.out.append(_frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", st.recv_unacked)))
            st.recv_unacked = 0
        if flags & PADDED:
            if not n or payload[0] >= n:
                raise ValueError("DATA padding")
            payload = payload[1:n - payload[0]]
        if not st.local_done:
            self._messages(st, payload)
        if flags & END_STREAM:
            self._remote_end(st)

    def _messages(self, st: _Stream, payload: memoryview) -> None:
        if st.buf:
            st.buf += payload
            data, pos = st.buf, 0
        else:
            data, pos = payload, 0  # whole messages straight from the frame: no copy
        end = len(data)
        while end - pos >= 5 and not st.local_done:
            compressed, mlen = _GRPC_PREFIX.unpack_from(data, pos)
            if mlen > self.srv.max_message:
                self._finish(st, _error_trailers(GRPC_RESOURCE_EXHAUSTED, f"message of {mlen} bytes exceeds the limit"))
                return
            if compressed:
                self._finish(st, _error_trailers(GRPC_INTERNAL, "compressed messages are not supported"))
                return
            if end - pos - 5 < mlen:
                break
            msg = self.srv.parse(data[pos + 5:pos + 5 + mlen])
            pos += 5 + mlen
            if st.waiting:
                st.backlog.append(msg)
            else:
                self._dispatch(st, msg)
        if st.local_done:
            st.buf = bytearray()
        elif data is st.buf:
            del st.buf[:pos]
        elif pos < end:
            st.buf = bytearray(data[pos:])

    def _dispatch(self, st: _Stream, msg) -> None:
        replies = st.handler.on_message(msg)
        if replies.__class__ is not list:
            st.waiting = True
            task = asyncio.ensure_future(replies)
            self.tasks.add(task)      # the loop holds tasks weakly
            task.add_done_callback(lambda t, st=st: self._resume(st, t))
            return
        self._reply(st, replies)

    def _reply(self, st: _Stream, replies: list) -> None:
        if replies:
            self._send(st, b"".join(_GRPC_PREFIX.pack(0, len(b)) + b
                                    for b in [r.SerializeToString() for r in replies]))
        if st.handler.closed:
            self._finish(st, OK_TRAILERS)

    def _resume(self, st: _Stream, task: asyncio.Future) -> None:
        """The handler's awaited replies are ready: send them, then the messages held meanwhile."""
        self.tasks.discard(task)
        st.waiting = False
        if self.closed or self.streams.get(st.sid) is not st or st.local_done:
            return   # the call ended meanwhile (reset, connection lost): the handler was closed then
        try:
            replies = task.result()
        except BaseException:
            log.exception("ext_proc handler failed while preparing replies")
            self._finish(st, _error_trailers(GRPC_INTERNAL, "internal error"))
            self._flush()
            return
        self._reply(st, replies)
        while st.backlog and not st.waiting and not st.local_done:
            self._dispatch(st, st.backlog.pop(0))
        if st.local_done:
            st.backlog = []
        if st.remote_done and not st.waiting and not st.backlog:
            self._remote_end(st)
        self._flush()

    def _push(self, st: _Stream, replies: list) -> None:
        """Replies the handler sends unasked, outside any frame we are reading."""
        if self.closed or self.streams.get(st.sid) is not st or st.local_done:
            return
        self._reply(st, replies)
        self._flush()

    def _remote_end(self, st: _Stream) -> None:
        st.remote_done = True
        if st.waiting or st.backlog:
            return   # ended once the held messages are answered (_resume)
        if not st.local_done:
            if st.buf:
                self._finish(st, _error_trailers(GRPC_INTERNAL, "stream ended inside a message"))
            else:
                self._finish(st, OK_TRAILERS)
        self._maybe_forget(st)

    # ---------------------------------------------------------------- writing

    def _send(self, st: _Stream, payload: bytes) -> None:
        if not st.headers_sent:
            st.headers_sent = True
            self.out.append(_frame(HEADERS, END_HEADERS, st.sid, RESPONSE_HEADERS))
        if st.pending:
            st.pending += payload
            return
        n = len(payload)
        if n <= self.peer_max_frame and n <= self.send_window and n <= st.send_window:
            self.send_window -= n
            st.send_window -= n
            self.out.append(_frame(DATA, 0, st.sid, payload))
            return
        st.pending += payload
        self._drain(st)

    def _drain(self, st: _Stream) -> None:
        """Sends what the windows allow of st.pending, then the trailers once nothing is pending."""
        pending = st.pending
        sent, total = 0, len(pending)
        if total:
            view = memoryview(pending)
            while sent < total and self.send_window > 0 and st.send_window > 0:
                n = min(total - sent, self.send_window, st.send_window, self.peer_max_frame)
                self.out.append(_frame(DATA, 0, st.sid, view[sent:sent + n].tobytes()))
                sent += n
                self.send_window -= n
                st.send_window -= n
            view.release()
            del pending[:sent]  # once per drain, not once per frame
        if pending:
            self.blocked.add(st.sid)
            return
        self.blocked.discard(st.sid)
        if st.trailers is not None:
            flags = END_HEADERS | END_STREAM
            block = st.trailers if st.headers_sent else RESPONSE_HEADERS + st.trailers
            st.headers_sent = True
            st.trailers = None
            self.out.append(_frame(HEADERS, flags, st.sid, block))
            self._maybe_forget(st)

    def _unblock(self) -> None:
        for sid in list(self.blocked):
            st = self.streams.get(sid)
            if st is None:
                self.blocked.discard(sid)
            else:
                self._drain(st)

    def _finish(self, st: _Stream, trailers: bytes) -> None:
        """Ends our half of the call (after any pending data)."""
        if st.local_done:
            return
        st.local_done = True
        st.trailers = trailers
        st.handler.close()
        self._drain(st)

    def _maybe_forget(self, st: _Stream) -> None:
        if st.remote_done and st.local_done and st.trailers is None and not st.pending:
            self.streams.pop(st.sid, None)
            if self.goaway_sent and not self.streams and self.transport is not None:
                self._flush()
                self.transport.close()

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.closed:
            out, self.out = self.out, []
            self.transport.writelines(out)
