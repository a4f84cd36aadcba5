"""A raw-frame HTTP/2 client for attacking the ext_proc transport: it sends whatever frames a test
builds, legal or not, and records what comes back per stream (gRPC status, messages, RST_STREAM)
and per connection (SETTINGS, GOAWAY, close). Blocking sockets on loopback; every wait has a deadline."""
from __future__ import annotations

import socket
import struct
import time

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hpack import Decoder, Encoder

from epp.server.h2frames import (ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, PREFACE,
                                 RST_STREAM, SETTINGS, WINDOW_UPDATE, frame, settings)

METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


def grpc_message(body: bytes) -> bytes:
    return struct.pack(">BI", 0, len(body)) + body


def hello() -> bytes:
    """A ProcessingRequest epp answers at once: a GET without a body is routed at its headers."""
    from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
    hs = {":method": "GET", ":path": "/v1/models", ":authority": "gw", ":scheme": "http"}
    return pb.ProcessingRequest(request_headers=pb.HttpHeaders(
        headers=HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in hs.items()]),
        end_of_stream=True)).SerializeToString()


def held() -> bytes:
    """A ProcessingRequest epp holds without answering: a full-duplex POST whose body has not come."""
    from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
    hs = {":method": "POST", ":path": "/v1/completions", ":authority": "gw", "content-type": "application/json"}
    msg = pb.ProcessingRequest(request_headers=pb.HttpHeaders(
        headers=HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in hs.items()])))
    msg.protocol_config.request_body_mode = 4  # FULL_DUPLEX_STREAMED
    return msg.SerializeToString()


class Call:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.data = bytearray()
        self.rst: int | None = None
        self.ended = False      # END_STREAM seen

    @property
    def status(self) -> int | None:
        v = dict(self.headers).get(b"grpc-status")
        return None if v is None else int(v)

    @property
    def message(self) -> str:
        return dict(self.headers).get(b"grpc-message", b"").decode()

    @property
    def replies(self) -> list[pb.ProcessingResponse]:
        out, pos, d = [], 0, bytes(self.data)
        while len(d) - pos >= 5:
            _, n = struct.unpack_from(">BI", d, pos)
            if len(d) - pos - 5 < n:
                break   # still arriving
            out.append(pb.ProcessingResponse.FromString(d[pos + 5:pos + 5 + n]))
            pos += 5 + n
        return out

    @property
    def done(self) -> bool:
        return self.ended or self.rst is not None


class H2Client:
    def __init__(self, port: int, window: int = 1 << 30, initial: bool = True, timeout: float = 10.0,
                 ack_pings: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.enc, self.dec = Encoder(), Decoder()
        self.dec.max_header_list_size = 1 << 24
        self.buf = bytearray()
        self.calls: dict[int, Call] = {}
        self.server_settings: dict[int, int] = {}
        self.goaway: tuple[int, int, bytes] | None = None   # last stream id, code, debug data
        self.closed = False
        self.pings_acked = 0
        self.ping_acks: list[bytes] = []
        self.ack_pings = ack_pings       # as HTTP/2 requires; off to play a peer that never does
        self.pings: list[bytes] = []     # the server's own pings
        self.next_sid = 1
        self._block: tuple[int, int, bytearray] | None = None
        if initial:
            self.sock.sendall(PREFACE + settings(((4, window),)) + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", window - 65535)))

    def close(self) -> None:
        self.sock.close()

    # ---------------------------------------------------------------- sending

    def send(self, data: bytes) -> bool:
        """False when the server has closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.closed = True
            return False

    def sid(self) -> int:
        sid, self.next_sid = self.next_sid, self.next_sid + 2
        return sid

    def header_block(self, path: str = METHOD, extra=()) -> bytes:
        return self.enc.encode([(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "epp"),
                                ("content-type", "application/grpc"), ("te", "trailers"), *extra])

    def open(self, sid: int | None = None, message: bytes | None = None, end: bool = False, extra=(),
             path: str = METHOD) -> int:
        """HEADERS for a new call, then one message; `end` half-closes with it."""
        sid = sid or self.sid()
        self.calls[sid] = Call()
        out = frame(HEADERS, END_HEADERS | (END_STREAM if end and message is None else 0), sid,
                    self.header_block(path, extra))
        if message is not None:
            out += frame(DATA, END_STREAM if end else 0, sid, grpc_message(message))
        self.send(out)
        return sid

    # ---------------------------------------------------------------- receiving

    def pump(self, until, timeout: float | None = None) -> bool:
        """Reads frames until until() holds or the connection ends; False if the deadline came first."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not until():
            if self.closed:
                return bool(until())
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                return False
            except OSError:
                self.closed = True
                continue
            if not chunk:
                self.closed = True
                continue
            self.buf += chunk
            self._parse()
        return True

    def call(self, sid: int, timeout: float | None = None) -> Call:
        self.pump(lambda: self.calls[sid].done, timeout)
        return self.calls[sid]

    def until_goaway(self, timeout: float | None = None) -> tuple[int, int, bytes] | None:
        self.pump(lambda: self.goaway is not None, timeout)
        return self.goaway

    def until_closed(self, timeout: float | None = None) -> bool:
        return self.pump(lambda: self.closed, timeout)

    def _parse(self) -> None:
        buf = self.buf
        pos = 0
        while len(buf) - pos >= 9:
            hi, lo, ftype, flags, sid = struct.unpack_from(">BHBBI", buf, pos)
            n = (hi << 16) | lo
            if len(buf) - pos - 9 < n:
                break
            self._frame(ftype, flags, sid & 0x7FFFFFFF, bytes(buf[pos + 9:pos + 9 + n]))
            pos += 9 + n
        del buf[:pos]

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        call = self.calls.setdefault(sid, Call()) if sid else None
        if ftype == SETTINGS and not flags & ACK:
            for i in range(0, len(payload), 6):
                k, v = struct.unpack_from(">HI", payload, i)
                self.server_settings[k] = v
            self.send(frame(SETTINGS, ACK, 0))
        elif ftype in (HEADERS, CONTINUATION):
            if ftype == HEADERS:
                self._block = (sid, flags, bytearray(payload))   # the server sends no padding or priority
            else:
                self._block[2].extend(payload)
            if flags & END_HEADERS:
                bsid, bflags, block = self._block
                self._block = None
                self.calls[bsid].headers += self.dec.decode(bytes(block), raw=True)
                if bflags & END_STREAM:
                    self.calls[bsid].ended = True
        elif ftype == DATA:
            call.data += payload
            if flags & END_STREAM:
                call.ended = True
            if payload:  # keep the server's window open, as a well-behaved reader
                self.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", len(payload))))
        elif ftype == RST_STREAM:
            call.rst = struct.unpack(">I", payload)[0]
        elif ftype == GOAWAY:
            last, code = struct.unpack_from(">II", payload)
            self.goaway = (last & 0x7FFFFFFF, code, payload[8:])
        elif ftype == PING and flags & ACK:
            self.pings_acked += 1
            self.ping_acks.append(payload)
        elif ftype == PING:
            self.pings.append(payload)
            if self.ack_pings:
                self.send(frame(PING, ACK, 0, payload))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")
