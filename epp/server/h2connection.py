"""One HTTP/2 connection of the ext_proc server: frames in, gRPC messages to handlers, replies out.

Errors are answered at the smallest scope HTTP/2 allows, as grpc-go does: a bad message, an
oversized message or header list, a stream's flow-control violation end that stream only (gRPC status
or RST_STREAM) and the connection's other calls carry on. What cannot be confined (a broken frame,
HPACK state that can no longer be kept, a connection-level window violation, abuse) ends the
connection with GOAWAY. Every buffer is bounded by a limit in `Limits` (docs/transport.md).
"""
from __future__ import annotations

import asyncio
import logging
import struct
from time import monotonic

from google.protobuf.message import DecodeError
from hpack.exceptions import HPACKError

from .h2frames import (ACK, COMPRESSION_ERROR, CONTINUATION, DATA, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM,
                       FLOW_CONTROL_ERROR, FRAME, FRAME_SIZE_ERROR, GOAWAY, GRPC_INTERNAL, GRPC_PREFIX,
                       GRPC_RESOURCE_EXHAUSTED, GRPC_UNIMPLEMENTED, HEADERS, MAX_WINDOW, NO_ERROR, OK_TRAILERS,
                       PADDED, PING, PREFACE, PRIORITY, PRIORITY_FLAG, PROTOCOL_ERROR, PUSH_PROMISE, REFUSED_STREAM,
                       RESPONSE_HEADERS, RST_STREAM, S_ENABLE_PUSH, S_HEADER_TABLE_SIZE, S_INITIAL_WINDOW,
                       S_MAX_CONCURRENT, S_MAX_FRAME, S_MAX_HEADER_LIST, SETTING, SETTINGS, STREAM_CLOSED, U32,
                       WINDOW_UPDATE, error_trailers, frame, goaway, rst, settings, window_update)
from .h2limits import Budget
from .hpack_cache import CachingDecoder

log = logging.getLogger("epp.server.h2grpc")
U64 = struct.Struct(">Q")

# The stream-ending replies the peer may have unread at once (a fence). Envoy resets the ext_proc
# stream of every immediate response, and drops the connection (its streams fail as "protocol
# error", 500 to the client) once more than 1,000 control frames queue on it: when it reads many
# answers in one go, as after flow control answers its whole queue at shutdown, its resets overflow
# that (2 requests of 10,000 in CI, with the answers already paced 128 per 2 ms). So every
# FENCE_EVERY stream ends a PING goes out with them, and past FENCE_LIMIT ends not yet covered by an
# acknowledged PING, further output waits for the acknowledgement: the peer has by then read and
# answered what came before. Envoy answers a PING within its next read, so this costs nothing until a
# burst; the ends held count against the stream limit, so a peer that never acknowledges gets its new
# calls refused rather than buffered.
FENCE_EVERY = 128
FENCE_LIMIT = 512


class ConnectionError_(Exception):
    """Ends the connection with GOAWAY(code)."""

    def __init__(self, code: int, why: str, debug: bytes = b"") -> None:
        super().__init__(why)
        self.code = code
        self.debug = debug


class Stream:
    __slots__ = ("sid", "handler", "buf", "send_window", "pending", "headers_sent", "trailers", "remote_done",
                 "local_done", "recv_unacked", "waiting", "backlog", "started", "orphaned")

    def __init__(self, sid: int, handler, send_window: int) -> None:
        self.sid = sid
        self.handler = handler
        self.buf = bytearray()           # a message still arriving
        self.send_window = send_window
        self.pending = bytearray()       # DATA payload waiting for flow-control window
        self.headers_sent = False
        self.trailers: bytes | None = None  # queued behind pending data
        self.remote_done = False
        self.local_done = False
        self.recv_unacked = 0            # received and not yet credited back: at most one window
        self.waiting = False             # the handler is preparing replies asynchronously
        self.backlog: list = []          # messages that arrived meanwhile, in order
        self.started = False             # a message reached the handler
        self.orphaned = False            # forgotten while its handler's task still runs


class Connection(asyncio.Protocol):
    def __init__(self, server) -> None:
        self.srv = server
        lim = self.lim = server.limits
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.preface_ok = False
        # the decoder's own cap bounds what one block may inflate to; past it the decoder has stopped
        # midway and the HPACK table is lost, so that is a connection error
        self.decoder = CachingDecoder(lim.header_block_cap)
        self.streams: dict[int, Stream] = {}
        self.orphans = 0                      # reset calls whose handler task still runs: they hold a slot
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
        self.peer_goaway = False
        self.failed = False
        self.closed = False
        self.eof_sent = False                 # our side is over (GOAWAY and FIN sent); still reading
        self.tasks: set[asyncio.Future] = set()   # handlers' replies being prepared
        self.budget = Budget(lim.max_glitches_per_second)
        self.ping_strikes = 0
        self.last_ping = float("-inf")
        self.replied_since_ping = False
        self.end_marks: list[int] = []        # positions in out just after each stream-ending frame
        self.ends_sent = 0                    # stream ends written, in all
        self.ends_pinged = 0                  # ...as of the last PING we sent
        self.ends_acked = 0                   # ...as of the last PING the peer acknowledged

    # ---------------------------------------------------------------- connection life

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.srv.connections.add(self)
        if self.srv.draining:
            transport.close()
            return
        lim = self.lim
        transport.set_write_buffer_limits(high=lim.write_buffer_high)
        transport.write(settings(((S_ENABLE_PUSH, 0), (S_MAX_CONCURRENT, lim.max_concurrent_streams),
                                  (S_INITIAL_WINDOW, lim.stream_window), (S_MAX_FRAME, lim.max_frame_size),
                                  (S_MAX_HEADER_LIST, lim.max_header_list_size)))
                        + window_update(0, lim.connection_window - 65535))

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.srv.connections.discard(self)
        streams, self.streams = self.streams, {}
        for st in streams.values():  # the peer is gone: every call on it is cancelled
            if not st.local_done:
                st.handler.close()

    # the peer does not read: stop reading its requests (and pings) until it does, so replies
    # cannot pile up without bound
    def pause_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False   # the peer has finished: close (after our queued writes), as asyncio does by default

    @property
    def unsent_bytes(self) -> int:
        t = self.transport
        queued = t.get_write_buffer_size() if t is not None and not t.is_closing() else 0
        return queued + sum(len(f) for f in self.out)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def goaway(self, code: int, debug: bytes = b"") -> None:
        if not self.goaway_sent and self.transport is not None and not self.closed:
            self.goaway_sent = True
            self.out.append(goaway(self.last_sid, code, debug))
            self._flush()
            if not self.streams:
                self._end()

    def _end(self) -> None:
        """Our half of the connection is over: FIN after what is written, then read on until the peer
        closes. Closing a socket with unread input sends TCP RST, and the peer's kernel then drops
        what it had received but not yet read: replies that were on their way would be lost (seen
        with thousands of immediate responses just ahead of the GOAWAY). server.stop aborts what the
        peer never closes."""
        t = self.transport
        if t is None or self.eof_sent or t.is_closing():
            return
        if self.out:   # output held for a fence: FIN once it is written (_ping_ack)
            return
        if t.can_write_eof():
            self.eof_sent = True
            try:
                t.write_eof()
            except OSError:   # the peer is already gone (ENOTCONN)
                t.abort()
                return
            t.resume_reading()
        else:  # TLS has no half-close: close_notify and close
            t.close()

    def _fail(self, code: int, why: str, debug: bytes = b"") -> None:
        log.warning("ext_proc connection error: %s", why)
        self.failed = True
        self.buf = bytearray()     # what is left unread is never read
        self.goaway(code, debug)
        self.abort()

    def _glitch(self, what: str) -> None:
        """Frames that cost work without carrying a call forward: resets of calls before their first
        message, refused streams, SETTINGS, PRIORITY, unknown or empty frames, unsolicited PING acks,
        frames for closed streams. A peer gets a budget of them per second, then GOAWAY."""
        if not self.budget.spend():
            raise ConnectionError_(ENHANCE_YOUR_CALM, f"too many {what}", what.replace(" ", "_").encode())

    # ---------------------------------------------------------------- reading

    def data_received(self, data: bytes) -> None:
        if self.failed:
            return
        buf = self.buf
        buf += data
        try:
            if not self.preface_ok:
                if len(buf) < len(PREFACE):
                    if PREFACE.startswith(buf):
                        return
                elif buf.startswith(PREFACE):
                    del buf[:len(PREFACE)]
                    self.preface_ok = True
                if not self.preface_ok:
                    self._fail(PROTOCOL_ERROR, "not an HTTP/2 client (bad connection preface)")
                    return
            pos, end = 0, len(buf)
            max_frame = self.lim.max_frame_size
            while end - pos >= 9:
                hi, lo, ftype, flags, sid = FRAME.unpack_from(buf, pos)
                length = (hi << 16) | lo
                if length > max_frame:
                    raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                if end - pos - 9 < length:
                    break
                payload = memoryview(buf)[pos + 9:pos + 9 + length]
                try:
                    self._on_frame(ftype, flags, sid & 0x7FFFFFFF, payload)
                finally:
                    payload.release()
                pos += 9 + length
                if self.failed or self.closed:
                    return
            del buf[:pos]
        except ConnectionError_ as e:
            self._fail(e.code, str(e), e.debug)
            return
        except HPACKError as e:
            self._fail(COMPRESSION_ERROR, f"header block: {e or type(e).__name__}")
            return
        except (ValueError, struct.error) as e:
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
            block = self.header_block
            if len(block) + len(payload) > self.lim.header_block_cap:
                self.header_block = bytearray()
                raise ConnectionError_(ENHANCE_YOUR_CALM, "header block over twice the header list limit",
                                       b"header list too large")
            if flags & END_HEADERS:
                block += payload
                self.header_block = bytearray()
                self._header_block_done(block)
            else:
                if not payload:
                    self._glitch("empty frames")
                block += payload
        elif ftype == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif ftype == SETTINGS:
            if sid:
                raise ValueError("SETTINGS on a stream")
            if flags & ACK:
                if payload:
                    raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS ack with a payload")
            else:
                self._glitch("settings")
                self._settings(payload)
        elif ftype == PING:
            if len(payload) != 8:
                raise ConnectionError_(FRAME_SIZE_ERROR, "PING length")
            if sid:
                raise ValueError("PING on a stream")
            if flags & ACK:
                self._ping_ack(payload)
            else:
                self._ping(payload)
        elif ftype == RST_STREAM:
            self._rst_stream(sid, payload)
        elif ftype == GOAWAY:
            if sid:
                raise ValueError("GOAWAY on a stream")
            self.peer_goaway = True  # the peer is leaving: answer what is open, accept nothing new
        elif ftype == PUSH_PROMISE:
            raise ValueError("PUSH_PROMISE from a client")
        elif ftype == PRIORITY:
            if not sid:
                raise ValueError("PRIORITY on stream 0")
            self._glitch("priority frames")   # advisory, and we have nothing to prioritise
        else:
            self._glitch("unknown frames")    # ignored, as HTTP/2 requires

    def _ping(self, payload: memoryview) -> None:
        self.out.append(frame(PING, ACK, 0, bytes(payload)))
        # grpc-go's keepalive enforcement: a ping is a strike when it follows the previous one by
        # less than the minimum time and no reply data went out in between
        now = monotonic()
        if self.replied_since_ping:
            self.replied_since_ping = False
            self.ping_strikes = 0
        elif now - self.last_ping < self.lim.keepalive_min_time:
            self.ping_strikes += 1
            if self.ping_strikes > self.lim.max_ping_strikes:
                raise ConnectionError_(ENHANCE_YOUR_CALM, "too many pings", b"too_many_pings")
        self.last_ping = now

    def _ping_ack(self, payload: memoryview) -> None:
        mark = U64.unpack_from(payload)[0]
        if not self.ends_acked < mark <= self.ends_pinged:
            self._glitch("ping acks")   # not one of our fences
            return
        self.ends_acked = mark
        if self.out:
            self._flush()
            if not self.out and (self.goaway_sent or self.peer_goaway) and not self.streams:
                self._end()   # the FIN that waited for held output

    def _settings(self, payload: memoryview) -> None:
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS length")
        for i in range(0, len(payload), 6):
            key, value = SETTING.unpack_from(payload, i)
            if key == S_INITIAL_WINDOW:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for st in self.streams.values():
                    st.send_window += delta
                    if st.send_window > MAX_WINDOW:
                        raise ConnectionError_(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE overflows a window")
            elif key == S_MAX_FRAME:
                if not 16384 <= value <= (1 << 24) - 1:
                    raise ValueError("MAX_FRAME_SIZE out of range")
                self.peer_max_frame = value
            elif key == S_ENABLE_PUSH:
                if value > 1:
                    raise ValueError("ENABLE_PUSH out of range")
            elif key == S_HEADER_TABLE_SIZE:
                pass  # we never index, so the peer's table size does not constrain us
        self.out.append(frame(SETTINGS, ACK, 0))
        self._unblock()

    def _window_update(self, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
        inc = U32.unpack_from(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if not inc:
                raise ValueError("WINDOW_UPDATE of 0")
            self.send_window += inc
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
        else:
            st = self.streams.get(sid)
            if st is None:
                if sid > self.last_sid:
                    raise ValueError("WINDOW_UPDATE on an idle stream")
                return   # a stream we closed: the peer had not heard yet
            if not inc:
                self._reset(st, PROTOCOL_ERROR)
                return
            st.send_window += inc
            if st.send_window > MAX_WINDOW:
                self._reset(st, FLOW_CONTROL_ERROR)
                return
        self._unblock()

    def _rst_stream(self, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "RST_STREAM length")
        if not sid or sid > self.last_sid:
            raise ValueError("RST_STREAM on an idle stream")
        st = self.streams.get(sid)
        if st is not None and not st.started:
            # rapid reset (CVE-2023-44487) opens and cancels calls as fast as it can: what a call
            # costs before its first message is paid from the glitch budget. A reset of a call that is
            # over is not: Envoy resets every finished ext_proc stream, thousands a second at once when
            # many calls end together (flow control answering its queue at shutdown)
            self._glitch("resets")
        if st is not None:
            self._forget(st)
            if not st.local_done:
                st.local_done = True
                st.handler.close()

    def _headers(self, flags: int, sid: int, payload: memoryview) -> None:
        if not sid & 1:
            raise ValueError("HEADERS on an invalid stream id")
        start, stop = 0, len(payload)
        if flags & PADDED:
            if not stop:
                raise ValueError("HEADERS padding")
            start, stop = 1, stop - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if stop < start:
            raise ValueError("HEADERS padding")
        if stop - start > self.lim.header_block_cap:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "header block over twice the header list limit",
                                   b"header list too large")
        self.headers_sid, self.headers_flags = sid, flags
        if flags & END_HEADERS:
            self._header_block_done(bytes(payload[start:stop]))
        else:
            if start == stop:
                self._glitch("empty frames")
            self.header_block = bytearray(payload[start:stop])

    def _header_block_done(self, block) -> None:
        sid, flags = self.headers_sid, self.headers_flags
        self.headers_sid = 0
        # always decoded, even for a call we refuse: skipping a block would desynchronise HPACK
        headers, size = self.decoder.decode(block)
        too_big = size > self.lim.max_header_list_size
        st = self.streams.get(sid)
        if st is not None:  # trailers: the client's half of the call is over
            if too_big:
                self._finish(st, error_trailers(GRPC_RESOURCE_EXHAUSTED, f"trailers of {size} bytes exceed the limit"))
            elif not flags & END_STREAM:
                self._reset(st, PROTOCOL_ERROR)
            elif st.remote_done:
                self._reset(st, STREAM_CLOSED)
            else:
                self._remote_end(st)
            return
        if sid <= self.last_sid:
            if not flags & END_STREAM:   # with it, trailers that crossed our reset: a race, not abuse
                self._glitch("frames for closed streams")
            return
        self.last_sid = sid
        if self.goaway_sent or self.peer_goaway or self.srv.draining:
            self._out_end(rst(sid, REFUSED_STREAM))
            return
        # first, so that answers held for a fence (end_marks) stay bounded: a call refused for its
        # headers or path would otherwise add its trailers to them without limit
        if len(self.streams) + self.orphans + len(self.end_marks) >= self.lim.max_concurrent_streams:
            self._glitch("refused streams")
            self._out_end(rst(sid, REFUSED_STREAM))
            return
        if too_big:
            self._refuse(sid, flags, GRPC_RESOURCE_EXHAUSTED,
                         f"header list of {size} bytes exceeds the limit of {self.lim.max_header_list_size}")
            return
        path = next((v for k, v in headers if k == b":path"), b"")
        if path != self.srv.path:
            self._refuse(sid, flags, GRPC_UNIMPLEMENTED, f"unknown method {path.decode(errors='replace')}")
            return
        st = self.streams[sid] = Stream(sid, self.srv.factory(), self.peer_initial_window)
        st.handler.push = lambda replies, st=st: self._push(st, replies)
        if flags & END_STREAM:
            self._remote_end(st)

    def _refuse(self, sid: int, flags: int, code: int, message: str) -> None:
        """A trailers-only gRPC answer to a call never opened; the peer is told to stop sending."""
        self.replied_since_ping = True
        self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, sid, RESPONSE_HEADERS + error_trailers(code, message)))
        if not flags & END_STREAM:
            self.out.append(rst(sid, NO_ERROR))
        self._mark_end()

    def _data(self, flags: int, sid: int, payload: memoryview) -> None:
        if not sid:
            raise ValueError("DATA on stream 0")
        n = len(payload)
        self.recv_unacked += n
        lim = self.lim
        if self.recv_unacked > lim.connection_window:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        if self.recv_unacked >= lim.connection_window >> 1:
            self.out.append(window_update(0, self.recv_unacked))
            self.recv_unacked = 0
        st = self.streams.get(sid)
        if st is None:
            if sid > self.last_sid:
                raise ValueError("DATA on an idle stream")
            if not n and not flags & END_STREAM:
                self._glitch("frames for closed streams")
            return  # a stream we have finished (or reset): its data only counts for flow control
        st.recv_unacked += n
        if st.recv_unacked > lim.stream_window:
            self._reset(st, FLOW_CONTROL_ERROR)
            return
        if st.remote_done:
            self._reset(st, STREAM_CLOSED)
            return
        if not n and not flags & END_STREAM:
            self._glitch("empty frames")
        # credit the window back only while this call keeps up: what waits for a busy handler, or
        # for the peer to take our replies, stays within one window
        if st.recv_unacked >= lim.stream_window >> 1 and not st.waiting and not st.pending:
            self.out.append(window_update(sid, st.recv_unacked))
            st.recv_unacked = 0
        if flags & PADDED:
            if not n or payload[0] >= n:
                raise ValueError("DATA padding")
            payload = payload[1:n - payload[0]]
        if not st.local_done:
            self._messages(st, payload)
        if flags & END_STREAM:
            self._remote_end(st)

    def _messages(self, st: Stream, payload: memoryview) -> None:
        if st.buf:
            st.buf += payload
            data, pos = st.buf, 0
        else:
            data, pos = payload, 0  # whole messages straight from the frame: no copy
        end = len(data)
        max_message = self.lim.max_recv_msg_size
        while end - pos >= 5 and not st.local_done:
            compressed, mlen = GRPC_PREFIX.unpack_from(data, pos)
            if mlen > max_message:
                self._finish(st, error_trailers(GRPC_RESOURCE_EXHAUSTED, f"grpc: received message larger than max "
                                                                         f"({mlen} vs. {max_message})"))
                break
            if compressed:
                self._finish(st, error_trailers(GRPC_INTERNAL, "compressed messages are not supported"))
                break
            if end - pos - 5 < mlen:
                break
            try:
                msg = self.srv.parse(data[pos + 5:pos + 5 + mlen])
            except DecodeError:
                self._finish(st, error_trailers(GRPC_INTERNAL, "grpc: error unmarshalling request"))
                break
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

    def _dispatch(self, st: Stream, msg) -> None:
        st.started = True
        try:
            replies = st.handler.on_message(msg)
        except Exception:
            log.exception("ext_proc handler failed")
            self._finish(st, error_trailers(GRPC_INTERNAL, "internal error"))
            return
        if not isinstance(replies, list):
            st.waiting = True
            task = asyncio.ensure_future(replies)
            self.tasks.add(task)      # the loop holds tasks weakly
            task.add_done_callback(lambda t, st=st: self._resume(st, t))
            return
        self._reply(st, replies)

    def _reply(self, st: Stream, replies: list) -> None:
        if replies:
            limit = self.lim.max_send_msg_size
            parts = []
            for r in replies:
                b = r.SerializeToString()
                if len(b) > limit:
                    self._finish(st, error_trailers(GRPC_RESOURCE_EXHAUSTED, f"grpc: trying to send message larger "
                                                                             f"than max ({len(b)} vs. {limit})"))
                    return
                parts.append(GRPC_PREFIX.pack(0, len(b)))
                parts.append(b)
            self._send(st, b"".join(parts))
        if st.handler.closed:
            self._finish(st, OK_TRAILERS)

    def _resume(self, st: Stream, task: asyncio.Future) -> None:
        """The handler's awaited replies are ready: send them, then the messages held meanwhile."""
        self.tasks.discard(task)
        st.waiting = False
        if st.orphaned:
            st.orphaned = False
            self.orphans -= 1
        if self.closed or self.streams.get(st.sid) is not st or st.local_done:
            if not task.cancelled():
                task.exception()   # the call ended meanwhile; its handler was closed then
            return
        try:
            replies = task.result()
        except BaseException:
            log.exception("ext_proc handler failed while preparing replies")
            self._finish(st, error_trailers(GRPC_INTERNAL, "internal error"))
            self._flush()
            return
        self._reply(st, replies)
        while st.backlog and not st.waiting and not st.local_done:
            self._dispatch(st, st.backlog.pop(0))
        if st.local_done:
            st.backlog = []
        elif not st.waiting:
            self._credit(st)
        if st.remote_done and not st.waiting and not st.backlog:
            self._remote_end(st)
        self._flush()

    def _credit(self, st: Stream) -> None:
        if st.recv_unacked >= self.lim.stream_window >> 1 and self.streams.get(st.sid) is st:
            self.out.append(window_update(st.sid, st.recv_unacked))
            st.recv_unacked = 0

    def _push(self, st: Stream, replies: list) -> None:
        """Replies the handler sends unasked (an eviction), outside any frame we are reading."""
        if self.closed or self.streams.get(st.sid) is not st or st.local_done:
            return
        self._reply(st, replies)
        self._flush()

    def _remote_end(self, st: Stream) -> None:
        st.remote_done = True
        if st.waiting or st.backlog:
            return   # ended once the held messages are answered (_resume)
        if not st.local_done:
            if st.buf:
                self._finish(st, error_trailers(GRPC_INTERNAL, "stream ended inside a message"))
            else:
                self._finish(st, OK_TRAILERS)
        self._maybe_forget(st)

    def _reset(self, st: Stream, code: int) -> None:
        """A stream error: RST_STREAM, the handler closed, the connection's other calls go on."""
        self._forget(st)
        if not st.local_done:
            st.local_done = True
            st.handler.close()
        self._out_end(rst(st.sid, code))

    def _forget(self, st: Stream) -> None:
        if self.streams.pop(st.sid, None) is st:
            self.blocked.discard(st.sid)
            if st.waiting and not st.orphaned:
                st.orphaned = True
                self.orphans += 1

    # ---------------------------------------------------------------- writing

    def _send(self, st: Stream, payload: bytes) -> None:
        self.replied_since_ping = True
        if not st.headers_sent:
            st.headers_sent = True
            self.out.append(frame(HEADERS, END_HEADERS, st.sid, RESPONSE_HEADERS))
        if st.pending:
            st.pending += payload
            return
        n = len(payload)
        if n <= self.peer_max_frame and n <= self.send_window and n <= st.send_window:
            self.send_window -= n
            st.send_window -= n
            self.out.append(frame(DATA, 0, st.sid, payload))
            return
        st.pending += payload
        self._drain(st)

    def _drain(self, st: Stream) -> None:
        """Sends what the windows allow of st.pending, then the trailers once nothing is pending."""
        pending = st.pending
        sent, total = 0, len(pending)
        if total:
            view = memoryview(pending)
            while sent < total and self.send_window > 0 and st.send_window > 0:
                n = min(total - sent, self.send_window, st.send_window, self.peer_max_frame)
                self.out.append(frame(DATA, 0, st.sid, view[sent:sent + n].tobytes()))
                sent += n
                self.send_window -= n
                st.send_window -= n
            view.release()
            del pending[:sent]  # once per drain, not once per frame
            if sent:
                self.replied_since_ping = True
        if pending:
            self.blocked.add(st.sid)
            return
        self.blocked.discard(st.sid)
        if total and not st.waiting:
            self._credit(st)
        if st.trailers is not None:
            flags = END_HEADERS | END_STREAM
            block = st.trailers if st.headers_sent else RESPONSE_HEADERS + st.trailers
            st.headers_sent = True
            st.trailers = None
            self.replied_since_ping = True
            self.out.append(frame(HEADERS, flags, st.sid, block))
            if not st.remote_done:
                # the call is over while the client may still be sending: tell it to stop (RFC 9113
                # §8.1), so the stream does not hold a slot until it notices
                st.remote_done = True
                self.out.append(rst(st.sid, NO_ERROR))
            self._mark_end()
            self._maybe_forget(st)

    def _unblock(self) -> None:
        for sid in list(self.blocked):
            st = self.streams.get(sid)
            if st is None:
                self.blocked.discard(sid)
            else:
                self._drain(st)

    def _finish(self, st: Stream, trailers: bytes) -> None:
        """Ends our half of the call (after any pending data)."""
        if st.local_done:
            return
        st.local_done = True
        st.trailers = trailers
        st.handler.close()
        self._drain(st)

    def _maybe_forget(self, st: Stream) -> None:
        if st.remote_done and st.local_done and st.trailers is None and not st.pending:
            self._forget(st)
            if (self.goaway_sent or self.peer_goaway) and not self.streams and self.transport is not None:
                self._flush()
                self._end()

    def _mark_end(self) -> None:
        self.end_marks.append(len(self.out))

    def _out_end(self, f: bytes) -> None:
        self.out.append(f)
        self._mark_end()

    def _flush(self) -> None:
        if self.eof_sent:
            self.out = []   # nothing may follow our FIN (the peer's late frames need no answer)
            self.end_marks.clear()
            return
        if not self.out or self.transport is None or self.closed:
            return
        marks = self.end_marks
        room = FENCE_LIMIT - (self.ends_sent - self.ends_acked)
        if len(marks) <= room or self.failed:   # a failing connection's GOAWAY goes out at once
            out, self.out = self.out, []
            ends = len(marks)
            marks.clear()
        elif room <= 0:
            return          # held until the peer acknowledges a fence (_ping_ack)
        else:               # what follows the room-th end waits
            cut = marks[room - 1]
            out, self.out = self.out[:cut], self.out[cut:]
            self.end_marks = [m - cut for m in marks[room:]]
            ends = room
        if ends:
            self.ends_sent += ends
            if self.ends_sent - self.ends_pinged >= FENCE_EVERY or self.out:
                self.ends_pinged = self.ends_sent
                out.append(frame(PING, 0, 0, U64.pack(self.ends_sent)))
        self.transport.writelines(out)
