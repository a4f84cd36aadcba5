"""OTLP trace export for epp's span records (epp.tracing.Span): the protobuf bytes are written directly
(the SDK's encoder spends ~30 µs per span building message objects; this is a few), parsed once by
the C protobuf runtime and sent by the SDK's own OTLP/gRPC exporter, so its configuration
(OTEL_EXPORTER_OTLP_* endpoint, TLS, headers, compression, timeout) and retries stay the SDK's.

Wire format: opentelemetry/proto/collector/trace/v1 ExportTraceServiceRequest."""
from __future__ import annotations

import struct

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

_pack_d = struct.Struct("<d").pack
_pack_q = struct.Struct("<Q").pack


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field; `tag` is its one-byte (or pre-encoded) key."""
    n = len(payload)
    return tag + (bytes((n,)) if n < 0x80 else _varint(n)) + payload


def _any(v) -> bytes:
    if isinstance(v, str):
        return _ld(b"\x0a", v.encode())
    if isinstance(v, bool):
        return b"\x10\x01" if v else b"\x10\x00"
    if isinstance(v, int):
        return b"\x18" + _varint(v & 0xFFFFFFFFFFFFFFFF)
    if isinstance(v, float):
        return b"\x21" + _pack_d(v)
    if isinstance(v, (list, tuple)):
        return _ld(b"\x2a", b"".join(_ld(b"\x0a", _any(x)) for x in v))
    return _ld(b"\x0a", str(v).encode())


def _kv(key: str, value) -> bytes:
    return _ld(b"\x0a", key.encode()) + _ld(b"\x12", _any(value))


def _span(s) -> bytes:
    parts = [b"\x0a\x10", s.trace_id.to_bytes(16, "big"), b"\x12\x08", s.span_id.to_bytes(8, "big")]
    if s.parent_id:
        parts += (b"\x22\x08", s.parent_id.to_bytes(8, "big"))
    parts += (_ld(b"\x2a", s.name.encode()), b"\x30\x02" if s.kind == 1 else b"\x30\x01",
              b"\x39", _pack_q(s.start_ns), b"\x41", _pack_q(s.end_ns))
    for k, v in s.attrs.items():
        parts.append(_ld(b"\x4a", _kv(k, v)))
    for ts, etype, message in s.events or ():
        parts.append(_ld(b"\x5a", b"\x09" + _pack_q(ts) + _ld(b"\x12", b"exception")
                         + _ld(b"\x1a", _kv("exception.type", etype)) + _ld(b"\x1a", _kv("exception.message", message))))
    if s.error is not None:
        parts.append(_ld(b"\x7a", _ld(b"\x12", s.error.encode()) + b"\x18\x02"))
    return b"".join(parts)


def encode(spans, resource_attrs: dict, version: str) -> bytes:
    """ExportTraceServiceRequest bytes: one resource, a scope per instrumentation scope."""
    by_scope: dict[str, list[bytes]] = {}
    for s in spans:
        by_scope.setdefault(s.scope, []).append(_ld(b"\x12", _span(s)))
    resource = _ld(b"\x0a", b"".join(_ld(b"\x0a", _kv(k, v)) for k, v in resource_attrs.items()))
    scopes = b"".join(_ld(b"\x12", _ld(b"\x0a", _ld(b"\x0a", name.encode()) + _ld(b"\x12", version.encode()))
                                   + b"".join(encoded)) for name, encoded in by_scope.items())
    return _ld(b"\x0a", resource + scopes)


class RecordsExporter(OTLPSpanExporter):
    """The SDK's OTLP/gRPC exporter, fed epp's span records instead of the SDK's spans."""

    takes_records = True

    def __init__(self, resource_attrs: dict, version: str, **kw) -> None:
        super().__init__(**kw)
        self._resource_attrs, self._version = dict(resource_attrs), version

    def _translate_data(self, data) -> ExportTraceServiceRequest:
        return ExportTraceServiceRequest.FromString(encode(data, self._resource_attrs, self._version))
