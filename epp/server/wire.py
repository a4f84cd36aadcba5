"""Full-duplex body echoes as protobuf wire bytes, written directly.

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

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

_LEN = 2      # wire type: length-delimited
_VARINT = 0


def _field(cls, name: str) -> int:
    return cls.DESCRIPTOR.fields_by_name[name].number


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


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
