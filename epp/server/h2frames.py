"""HTTP/2 wire format as the ext_proc server writes it: frame headers, the few HPACK encodings its
responses need (stateless literals), gRPC status trailers."""
from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
(NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR,
 REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM) = range(12)
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT, S_INITIAL_WINDOW, S_MAX_FRAME, S_MAX_HEADER_LIST = range(1, 7)
MAX_WINDOW = (1 << 31) - 1

GRPC_OK, GRPC_RESOURCE_EXHAUSTED, GRPC_UNIMPLEMENTED, GRPC_INTERNAL = 0, 8, 12, 13

FRAME = struct.Struct(">BHBBI")          # length (24 bits as 8 + 16), type, flags, stream id
GRPC_PREFIX = struct.Struct(">BI")       # compressed flag, message length
SETTING = struct.Struct(">HI")
U32 = struct.Struct(">I")


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME.pack(n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def rst(sid: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, sid, U32.pack(code))


def goaway(last_sid: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_sid, code) + debug)


def window_update(sid: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, U32.pack(increment))


def settings(pairs) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(SETTING.pack(k, v) for k, v in pairs))


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


def error_trailers(code: int, message: str) -> bytes:
    msg = "".join(c if 0x20 <= ord(c) < 0x7F and c != "%" else "".join(f"%{b:02X}" for b in c.encode())
                  for c in message)
    return literal(b"grpc-status", str(code).encode()) + literal(b"grpc-message", msg.encode())
