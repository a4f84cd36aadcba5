"""One ext_proc stream = one HTTP request: the state machine from request headers to the end of the
answer. Pure: it turns each ProcessingRequest into the ProcessingResponses to send, so it can be
driven message by message in tests without a network.

Request body modes:
- FULL_DUPLEX_STREAMED: the headers reply is held until the body has ended; then the headers reply
  (destination, clear_route_cache), then the body re-emitted as StreamedBodyResponse chunks.
- BUFFERED (and BUFFERED_PARTIAL): the headers are answered at once (spoofed routing headers
  removed); the body arrives whole and its reply carries the destination.
- STREAMED: when Envoy sends the body without waiting for the headers reply, like full duplex but each
  body message still gets its own reply; otherwise the headers must be answered before any body is
  seen, so the pick is made from the headers alone and the body is still checked at its end.
- NONE, or no body at all: the pick is made at the headers.

It talks to request control only through requestcontrol.interface (decide, validate_body,
response_started, served, done). When a plugin must do I/O before scheduling (tokenizing through the
model server), on_message returns an awaitable of the replies instead of a list (`Replies`); the
transport awaits it and hands this stream no further message until it is done. If the stream
closes meanwhile (the client left), close() cancels that awaitable when it is a future (a request
queued in flow control leaves its queue at once).

A transport that can send a message on its own (not as the reply to one) sets `push`; request control
can then end a decided request early (flow control's in-flight eviction: Decision.revoke).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Union

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from .. import headers as H
from ..requestcontrol.interface import Decision, EPPError, RequestControl
from . import protocol as p
from . import wire

log = logging.getLogger(__name__)

ReplyList = list[pb.ProcessingResponse]
# what a routed request loses of what the client sent: routing and control headers only epp may set
_REMOVE = H.ROUTING[1:] + H.CONTROL
_REMOVED = wire.removes(_REMOVE)
# what on_message gives back: the replies, or (while the decision is prepared) an awaitable of them;
# a transport tells them apart with isinstance(replies, list)
Replies = Union[ReplyList, Awaitable[ReplyList]]


class RequestStream:
    __slots__ = ("control", "max_body", "req_mode", "resp_mode", "early_body", "headers", "path",
                 "method", "subset", "chunks", "size", "decision", "headers_answered", "pending_acks",
                 "status", "usage", "finished", "closed", "decided_early", "mapper", "waiting", "abandoned",
                 "pending", "push")

    def __init__(self, control: RequestControl, max_body: int) -> None:
        self.control = control
        self.max_body = max_body
        self.req_mode: int | None = None
        self.resp_mode: int | None = None
        self.early_body = False
        self.headers: dict[str, str] = {}
        self.path = ""
        self.method = ""
        self.subset: list[str] | str | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.decision: Decision | None = None
        self.headers_answered = False
        self.pending_acks = 0          # STREAMED body messages not answered yet
        self.status: int | None = None
        self.usage = None              # the decision's usage reader, once the response has started
        self.finished = False          # accounting done
        self.closed = False            # an immediate response was sent: nothing more to do
        self.decided_early = False     # STREAMED without early body: picked at the headers
        self.mapper = None             # maps a rewritten model name back in the response body
        self.waiting = False           # a decision is being prepared (awaited by the transport)
        self.abandoned = False         # the stream closed while waiting
        self.pending: Awaitable[Decision] | None = None   # what is awaited while waiting
        self.push: Callable[[ReplyList], None] | None = None   # set by a transport that can send unasked

    # ---------------------------------------------------------------- dispatch

    def on_message(self, msg: pb.ProcessingRequest) -> Replies:
        """The replies to `msg`: a list, or an awaitable of one while the decision is prepared."""
        if self.closed:
            return []
        try:
            kind = msg.WhichOneof("request")
            if kind == "request_body":
                return self._request_body(msg.request_body)
            if kind == "response_body":
                return self._response_body(msg.response_body, msg)
            if kind == "request_headers":
                return self._request_headers(msg)
            if kind == "response_headers":
                return self._response_headers(msg.response_headers, msg)
            if kind == "request_trailers":
                return self._request_trailers()
            if kind == "response_trailers":
                self._finish()
                return [p.RESPONSE_TRAILERS_OK]
            return []
        except EPPError as e:
            return self._reject(e)
        except Exception:  # a bug must cost one request a 500, never the stream's silence
            log.exception("internal error while processing a request")
            return self._reject(EPPError(500, "internal error in the endpoint picker"))

    def _reject(self, e: EPPError) -> ReplyList:
        self.closed = True
        self.status = e.status
        self._finish()
        self.chunks = []
        return [p.immediate(e.status, e.body(), f"epp_{e.code}", e.headers, e.content_type)]

    def _decided(self, d: Decision) -> None:
        self.decision = d
        d.revoke = self._revoke

    def _revoke(self, e: EPPError) -> bool:
        """Ends the decided request now with `e` (pushed to the proxy); False when it cannot be."""
        if self.closed or self.finished or self.push is None:
            return False
        replies = self._reject(e)
        self.push(replies)
        return True

    def _decide_then(self, raw: bytes | None, then: Callable[[Decision], ReplyList]) -> Replies:
        """then(decision) gives the replies; when request control must wait (I/O before scheduling),
        an awaitable of them."""
        d = self.control.decide(self.headers, self.path, raw, self.subset)
        if isinstance(d, Decision):
            self._decided(d)
            return then(d)
        return self._later(d, then)

    async def _later(self, pending: Awaitable[Decision], then: Callable[[Decision], ReplyList]) -> ReplyList:
        self.waiting = True
        self.pending = pending
        try:
            d = await pending
        except asyncio.CancelledError:
            if self.abandoned:   # close() cancelled it: the client left, nobody to answer
                return []
            raise
        except EPPError as e:
            return [] if self.abandoned else self._reject(e)
        except Exception:
            log.exception("internal error while preparing a request")
            return [] if self.abandoned else self._reject(EPPError(500, "internal error in the endpoint picker"))
        finally:
            self.waiting = False
            self.pending = None
        self._decided(d)
        if self.abandoned:   # the client left meanwhile: the pick is counted in and out, nothing sent
            self.close()
            return []
        try:
            return then(d)
        except Exception:
            log.exception("internal error while processing a request")
            return self._reject(EPPError(500, "internal error in the endpoint picker"))

    @staticmethod
    def _and_then(out: Replies, more: Callable[[ReplyList], ReplyList]) -> Replies:
        """Applies `more` to replies that may still be on their way."""
        if isinstance(out, list):
            return more(out)

        async def chained():
            return more(await out)
        return chained()

    # ---------------------------------------------------------------- request side

    def _request_headers(self, msg: pb.ProcessingRequest) -> Replies:
        if msg.HasField("protocol_config"):
            pc = msg.protocol_config
            self.req_mode, self.resp_mode = pc.request_body_mode, pc.response_body_mode
            self.early_body = pc.send_body_without_waiting_for_header_response
        rh = msg.request_headers
        h = self.headers
        for hv in rh.headers.headers:
            h[hv.key.lower()] = p.header_value(hv)
        self.path = h.get(":path", "/")
        self.method = h.get(":method", "GET").upper()
        md = msg.metadata_context.filter_metadata.get(H.SUBSET_NS)
        if md is not None and H.SUBSET_KEY in md.fields:
            v = md.fields[H.SUBSET_KEY]
            kind = v.WhichOneof("kind")
            self.subset = ([x.string_value for x in v.list_value.values] if kind == "list_value"
                           else v.string_value if kind == "string_value" else [])
        if rh.end_of_stream:
            # no body: an API path still needs one (400), anything else is routed on load alone
            raw = b"" if self.control.body_required(self.method, self.path) else None
            return self._decide_then(raw, self._headers_replies)
        mode = self.req_mode
        if mode in (p.BUFFERED, p.BUFFERED_PARTIAL):
            self.headers_answered = True
            return [p.request_headers_response(p.common(p.header_mutation([], H.ROUTING + H.CONTROL)))]
        if mode == p.NONE or (mode == p.STREAMED and not self.early_body):
            self.decided_early = True
            return self._decide_then(None, self._headers_replies)
        return []  # FULL_DUPLEX (or STREAMED with early body, or unknown): wait for the body

    def _headers_replies(self, d: Decision) -> ReplyList:
        return [self._decided_headers_response(d)]

    def _request_body(self, b: pb.HttpBody) -> Replies:
        data = b.body
        if data:
            self.size += len(data)
            if self.size > self.max_body:
                raise EPPError(413, f"request body exceeds {self.max_body} bytes")
            self.chunks.append(data)
        mode = self.req_mode
        eos = b.end_of_stream or b.end_of_stream_without_message
        if mode == p.STREAMED:
            if self.decided_early:
                if eos:
                    self.control.validate_body(self.path, self._body())
                return [p.request_body_response()]
            self.pending_acks += 1
            return self._complete_streamed() if eos else []
        if mode in (p.BUFFERED, p.BUFFERED_PARTIAL):
            if not eos and mode == p.BUFFERED:
                return []  # whole body expected in one message; wait for the rest
            return self._complete_buffered()
        return self._complete_full_duplex(True) if eos else []

    def _request_trailers(self) -> Replies:
        """Trailers end the body when they follow it."""
        if self.decision is None and not self.closed:
            if self.req_mode == p.STREAMED:
                out = self._complete_streamed()
            elif self.req_mode in (p.BUFFERED, p.BUFFERED_PARTIAL):
                out = self._complete_buffered()
            else:
                out = self._complete_full_duplex(False)
            return self._and_then(out, self._trailers_ok)
        return [p.REQUEST_TRAILERS_OK]

    def _trailers_ok(self, out: ReplyList) -> ReplyList:
        if not self.closed:
            out.append(p.REQUEST_TRAILERS_OK)
        return out

    def _body(self) -> bytes:
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        return body

    def _route_mutation(self, d: Decision, body_changed: bool) -> pb.HeaderMutation:
        sets = [(H.DEST, d.destination)]
        remove = _REMOVE
        if d.headers:
            sets.extend(d.headers)
            ours = {k for k, _ in d.headers}
            remove = [h for h in remove if h not in ours]  # a client's value is overwritten, not kept
        if body_changed:
            sets.append(("content-length", str(len(d.body))))
        return p.header_mutation(sets, remove)

    def _decided_headers_response(self, d: Decision):
        self.headers_answered = True
        return self._routed(d, False)

    def _routed(self, d: Decision, body_changed: bool):
        """The request-headers reply that routes to d's destination: wire bytes written directly in the
        usual case (wire.routed_headers), protobuf objects when endpoint scores go along."""
        if d.scores is None:
            sets = d.headers or []
            removed = _REMOVED
            if sets:
                ours = {k for k, _ in sets}
                removed = wire.removes(h for h in _REMOVE if h not in ours)   # a client's value is overwritten
            if body_changed:
                sets = [*sets, ("content-length", str(len(d.body)))]
            return wire.routed_headers(d.destination, sets, removed)
        return p.request_headers_response(p.common(self._route_mutation(d, body_changed), clear_route_cache=True),
                                          p.lb_metadata(d.destination, d.scores))

    def _complete_full_duplex(self, eos: bool) -> Replies:
        body = self._body()

        def replies(d: Decision) -> ReplyList:
            out_body = d.body if d.body is not None else body
            return [self._routed(d, d.body is not None), *p.streamed_chunks(out_body, eos)]
        return self._decide_then(body, replies)

    def _complete_buffered(self) -> Replies:
        return self._decide_then(self._body(), self._buffered_replies)

    def _buffered_replies(self, d: Decision) -> ReplyList:
        changed = d.body is not None
        c = p.common(self._route_mutation(d, changed), clear_route_cache=True, body=d.body if changed else None)
        return [p.request_body_response(c, p.lb_metadata(d.destination, d.scores))]

    def _complete_streamed(self) -> Replies:
        return self._decide_then(self._body(), self._streamed_replies)

    def _streamed_replies(self, d: Decision) -> ReplyList:
        out = [self._decided_headers_response(d)]
        if d.body is not None:  # the new body rides on the first reply; the other chunks are dropped
            out.append(p.request_body_response(p.common(body=d.body)))
            out.extend(p.request_body_response(p.common(clear_body=True)) for _ in range(self.pending_acks - 1))
        else:
            out.extend(p.request_body_response() for _ in range(self.pending_acks))
        self.pending_acks = 0
        return out

    # ---------------------------------------------------------------- response side

    def _response_headers(self, rh: pb.HttpHeaders, msg: pb.ProcessingRequest) -> ReplyList:
        ctype = ""
        for hv in rh.headers.headers:
            k = hv.key
            if k == ":status":
                try:
                    self.status = int(p.header_value(hv))
                except ValueError:
                    pass
            elif k == "content-type":
                ctype = p.header_value(hv)
        served = self._served(msg)
        d = self.decision
        c = p.WENT_INTO_RESP_HEADERS
        if d is not None:
            sets = self.control.response_started(d, self.status, "event-stream" in ctype, served)
            self.usage = d.usage
            if d.explanation is not None:
                sets = (sets or []) + [(H.DECISION, d.explanation.decode())]
            remove = ()
            if d.served_model is not None and self.resp_mode not in (p.NONE, None) and not rh.end_of_stream:
                self.mapper = d.response_mapper()
                remove = ("content-length",)  # the client's model name may differ in length
            if sets or remove:
                c = p.common(p.header_mutation([*(sets or ()), p.WENT_INTO], remove))
        if rh.end_of_stream or self.resp_mode in (p.NONE, None):
            self._finish()
        return [p.response_headers_response(c)]

    def _response_body(self, b: pb.HttpBody, msg: pb.ProcessingRequest) -> ReplyList:
        data = b.body
        if self.usage is not None:
            self.usage.feed(data)
        eos = b.end_of_stream or b.end_of_stream_without_message
        if eos:
            self._served(msg)
            self._finish()
        if self.mapper is not None:
            data = self.mapper.feed(data, eos)
            if self.resp_mode == p.FULL_DUPLEX:
                return p.streamed_chunks(data, eos, response_side=True) if data or eos else []
            return [p.response_body_response(p.common(body=data) if data else p.common(clear_body=True))]
        if self.resp_mode == p.FULL_DUPLEX:
            return p.streamed_chunks(data, eos, response_side=True)
        return [p.response_body_response()]

    def _served(self, msg: pb.ProcessingRequest) -> str | None:
        """The proxy's report of the endpoint that served: the address, "" when the envoy.lb metadata
        came without it, None when there was no envoy.lb metadata."""
        md = msg.metadata_context.filter_metadata.get(H.LB_NS)
        if md is None:
            return None
        if H.DEST_SERVED not in md.fields:
            return ""
        served = md.fields[H.DEST_SERVED].string_value
        self.control.served(served)
        return served

    # ---------------------------------------------------------------- end

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.decision is not None:
            self.control.done(self.decision, self.status)

    def close(self) -> None:
        """The stream is over (normally, or the client went away): release everything."""
        if self.waiting:   # the decision is still being prepared: released when it arrives (_later)
            self.abandoned = True
            self.chunks = []
            if isinstance(self.pending, asyncio.Future):
                self.pending.cancel()   # e.g. leaves flow control's queue now
            return
        self._finish()
        self.chunks = []
        self.usage = None
        self.mapper = None
        self.decision = None
