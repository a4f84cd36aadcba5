"""Envoy ext_proc message builders."""
from __future__ import annotations

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf.struct_pb2 import Struct

from ..headers import DEST, DEST_SCORES, LB_NS
from ..headers import WENT_INTO_RESP_HEADERS as _WENT_INTO_NAME
from .wire import streamed_body

MAX_CHUNK = 62_000  # bytes per re-emitted body chunk, as GIE: well under any gRPC message limit

NONE = ProcessingMode.NONE
STREAMED = ProcessingMode.STREAMED
BUFFERED = ProcessingMode.BUFFERED
BUFFERED_PARTIAL = ProcessingMode.BUFFERED_PARTIAL
FULL_DUPLEX = ProcessingMode.FULL_DUPLEX_STREAMED

_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def header_value(h: HeaderValue) -> str:
    return h.raw_value.decode("latin-1") if h.raw_value else h.value


def header_mutation(set_headers: list[tuple[str, str]], remove: tuple[str, ...] | list[str] = ()) -> pb.HeaderMutation:
    return pb.HeaderMutation(
        set_headers=[HeaderValueOption(header=HeaderValue(key=k, raw_value=v.encode("latin-1", "replace")),
                                       append_action=_OVERWRITE) for k, v in set_headers],
        remove_headers=list(remove))


def common(mutation: pb.HeaderMutation | None = None, clear_route_cache: bool = False,
           body: bytes | None = None, streamed: tuple[bytes, bool] | None = None,
           clear_body: bool = False) -> pb.CommonResponse:
    c = pb.CommonResponse()
    if mutation is not None:
        c.header_mutation.CopyFrom(mutation)
    if clear_route_cache:
        c.clear_route_cache = True
    if streamed is not None:
        c.body_mutation.streamed_response.body = streamed[0]
        c.body_mutation.streamed_response.end_of_stream = streamed[1]
    elif body is not None:
        c.body_mutation.body = body
    elif clear_body:
        c.body_mutation.clear_body = True
    return c


def request_headers_response(c: pb.CommonResponse | None = None, metadata: Struct | None = None) -> pb.ProcessingResponse:
    r = pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=c) if c is not None else pb.HeadersResponse())
    if metadata is not None:
        r.dynamic_metadata.CopyFrom(metadata)
    return r


def request_body_response(c: pb.CommonResponse | None = None, metadata: Struct | None = None) -> pb.ProcessingResponse:
    r = pb.ProcessingResponse(request_body=pb.BodyResponse(response=c) if c is not None else pb.BodyResponse())
    if metadata is not None:
        r.dynamic_metadata.CopyFrom(metadata)
    return r


def response_headers_response(c: pb.CommonResponse | None = None) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=c) if c is not None else pb.HeadersResponse())


def response_body_response(c: pb.CommonResponse | None = None) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(response_body=pb.BodyResponse(response=c) if c is not None else pb.BodyResponse())


REQUEST_TRAILERS_OK = pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
RESPONSE_TRAILERS_OK = pb.ProcessingResponse(response_trailers=pb.TrailersResponse())

# every response carries it, as upstream's EPP sets it; built once (header_mutation is per call otherwise)
WENT_INTO = (_WENT_INTO_NAME, "true")
WENT_INTO_RESP_HEADERS = common(header_mutation([WENT_INTO]))


def streamed_chunks(body: bytes, end_of_stream: bool, response_side: bool = False) -> list:
    """The body as full-duplex StreamedBodyResponse messages of at most MAX_CHUNK bytes each (wire
    bytes written directly: wire.Encoded); an empty body is one empty message (it still has to carry
    end_of_stream)."""
    n = len(body)
    if n <= MAX_CHUNK:
        return [streamed_body(body, end_of_stream, response_side)]
    return [streamed_body(body[start:start + MAX_CHUNK], end_of_stream and start + MAX_CHUNK >= n, response_side)
            for start in range(0, n, MAX_CHUNK)]


def lb_metadata(destination: str, scores: dict[str, float] | None = None) -> Struct:
    """The envoy.lb dynamic metadata: the destination, and with --emit-endpoint-scores a struct of
    every scored candidate's "ip:port" -> score (upstream's x-gateway-destination-endpoint-scores)."""
    s = Struct()
    fields = s.fields[LB_NS].struct_value.fields   # set in place: Struct.update walks Python dicts (slow)
    fields[DEST].string_value = destination
    if scores:
        sf = fields[DEST_SCORES].struct_value.fields
        for address, score in scores.items():
            sf[address].number_value = score
    return s


def immediate(status: int, body: bytes, details: str, headers: list[tuple[str, str]] = (),
              content_type: str = "application/json") -> pb.ProcessingResponse:
    return pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
        status=HttpStatus(code=status),
        headers=header_mutation([("content-type", content_type), *headers]),
        body=body,
        details=details))
