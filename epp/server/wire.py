"""The replies every request gets, as protobuf wire bytes written directly: full-duplex body echoes
and the routed request-headers reply.

In FULL_DUPLEX_STREAMED mode every body chunk Envoy sends (request and response) must come back as a
ProcessingResponse{request_body|response_body: BodyResponse{response: CommonResponse{body_mutation:
BodyMutation{streamed_response: StreamedBodyResponse{body, end_of_stream}}}}}. Built as protobuf
objects and serialized, that is four message constructions and a copy of the body per chunk; written
here it is one bytes join. The field numbers come from the generated descriptors, so a change in the
schema shows (tests/unit/test_wire.py compares the bytes with the protobuf encoding).

Encoded is the bytes of one ProcessingResponse that still reads like the message: transports send it
as it is (SerializeToString returns it), and tests and the grpcio transport can inspect its fields
(parsed on first attribute access).
"""
from __future__ import annotations

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf.struct_pb2 import Struct, Value

from ..headers import DEST, LB_NS

_LEN = 2      # wire type: length-delimited
_VARINT = 0


def _field(cls, name: str) -> int:
    return cls.DESCRIPTOR.fields_by_name[name].number


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _varint(n: int) -> bytes:
    # lengths up to 2 MiB take one branch and no loop (every reply encodes ~30 of them)
    if n < 0x80:
        return _ONE[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x200000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_ONE = [bytes((i,)) for i in range(0x80)]


_BODY = _tag(_field(pb.StreamedBodyResponse, "body"), _LEN)
_EOS = _tag(_field(pb.StreamedBodyResponse, "end_of_stream"), _VARINT) + b"\x01"
_STREAMED = _tag(_field(pb.BodyMutation, "streamed_response"), _LEN)
_BODY_MUTATION = _tag(_field(pb.CommonResponse, "body_mutation"), _LEN)
_RESPONSE = _tag(_field(pb.BodyResponse, "response"), _LEN)
_REQUEST_BODY = _tag(_field(pb.ProcessingResponse, "request_body"), _LEN)
_RESPONSE_BODY = _tag(_field(pb.ProcessingResponse, "response_body"), _LEN)


class Encoded(bytes):
    """A serialized ProcessingResponse that still reads like one."""

    __slots__ = ()

    def SerializeToString(self) -> bytes:   # noqa: N802 (protobuf's name)
        return self

    def parsed(self) -> pb.ProcessingResponse:
        return pb.ProcessingResponse.FromString(self)

    def __getattr__(self, name: str):
        return getattr(self.parsed(), name)


def streamed_body(body: bytes, end_of_stream: bool, response_side: bool) -> Encoded:
    """One StreamedBodyResponse echo of `body` (request or response side)."""
    sb = [_BODY, _varint(len(body)), body] if body else []
    if end_of_stream:
        sb.append(_EOS)
    sb_len = sum(map(len, sb))
    mutation = _varint(sb_len)
    bm_len = len(_STREAMED) + len(mutation) + sb_len
    common_len = len(_BODY_MUTATION) + len(_varint(bm_len)) + bm_len
    resp_len = len(_RESPONSE) + len(_varint(common_len)) + common_len
    return Encoded(b"".join((_RESPONSE_BODY if response_side else _REQUEST_BODY, _varint(resp_len),
                             _RESPONSE, _varint(common_len), _BODY_MUTATION, _varint(bm_len), _STREAMED, mutation,
                             *sb)))


def _ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag + _varint(len(payload)) + payload


def _str_field(cls, name: str) -> bytes:
    return _tag(_field(cls, name), _LEN)


_HV_KEY, _HV_RAW = _str_field(HeaderValue, "key"), _str_field(HeaderValue, "raw_value")
_HVO_HEADER = _str_field(HeaderValueOption, "header")
_HVO_OVERWRITE = _tag(_field(HeaderValueOption, "append_action"), _VARINT) + _varint(
    HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)
_HM_SET, _HM_REMOVE = _str_field(pb.HeaderMutation, "set_headers"), _str_field(pb.HeaderMutation, "remove_headers")
_CR_MUTATION = _str_field(pb.CommonResponse, "header_mutation")
_CR_CLEAR_ROUTE = _tag(_field(pb.CommonResponse, "clear_route_cache"), _VARINT) + b"\x01"
_HR_RESPONSE = _str_field(pb.HeadersResponse, "response")
_PR_REQUEST_HEADERS = _str_field(pb.ProcessingResponse, "request_headers")
_PR_METADATA = _str_field(pb.ProcessingResponse, "dynamic_metadata")
_STRUCT_FIELDS = _str_field(Struct, "fields")
_ENTRY = Struct.DESCRIPTOR.fields_by_name["fields"].message_type
_ENTRY_KEY = _tag(_ENTRY.fields_by_name["key"].number, _LEN)
_ENTRY_VALUE = _tag(_ENTRY.fields_by_name["value"].number, _LEN)
_V_STRING, _V_STRUCT = _str_field(Value, "string_value"), _str_field(Value, "struct_value")
_LB_KEY = _ENTRY_KEY + _varint(len(LB_NS.encode())) + LB_NS.encode()
_DEST_KEY = _ENTRY_KEY + _varint(len(DEST.encode())) + DEST.encode()


def set_header(key: str, value: str) -> bytes:
    """One HeaderMutation.set_headers entry (overwrite or add; the value as raw bytes)."""
    raw = value.encode("latin-1", "replace")
    hv = _ld(_HV_KEY, key.encode()) + (_ld(_HV_RAW, raw) if raw else b"")   # proto3 leaves out empty bytes
    return _ld(_HM_SET, _ld(_HVO_HEADER, hv) + _HVO_OVERWRITE)


def removes(names) -> bytes:
    """HeaderMutation.remove_headers entries (build once for a fixed list)."""
    return b"".join(_ld(_HM_REMOVE, n.encode()) for n in names)


def routed_headers(destination: str, sets: list[tuple[str, str]], removed: bytes) -> Encoded:
    """The request-headers reply that routes: the destination header (first), the other `sets`, the
    `removed` entries, clear_route_cache, and envoy.lb metadata naming the destination."""
    dest = destination.encode()
    mutation = b"".join((set_header(DEST, destination), *(set_header(k, v) for k, v in sets), removed))
    common = _ld(_CR_MUTATION, mutation) + _CR_CLEAR_ROUTE
    inner = _ld(_STRUCT_FIELDS, _DEST_KEY + _ld(_ENTRY_VALUE, _ld(_V_STRING, dest)))
    metadata = _ld(_STRUCT_FIELDS, _LB_KEY + _ld(_ENTRY_VALUE, _ld(_V_STRUCT, inner)))
    return Encoded(_ld(_PR_REQUEST_HEADERS, _ld(_HR_RESPONSE, common)) + _ld(_PR_METADATA, metadata))
