"""The one seam between the transports (epp/server: ext_proc over HTTP/2 or grpcio) and request control.

A transport turns protocol messages into these calls and the answers back into protocol messages; it
never parses a request body, never touches the scheduler and never reads metrics. Request control
never sees a protobuf. One request's life, as a transport drives it:

    decide(headers, path, body, subset)   -> Decision, or an awaitable of one (I/O before scheduling, or
                                             waiting in flow control); if the stream closes meanwhile
                                             the transport cancels it when it is a future
    [validate_body(path, body)]              body that arrived after an early pick (STREAMED mode)
    response_started(decision, status, sse, served)  -> headers to add to the response
    decision.usage.feed(chunk) ...           response body chunks, for token accounting
    served(address)                          the proxy's report of the endpoint that answered
    done(decision, status)                   exactly once, answered, failed or cancelled

Anything the client should be told is raised as EPPError (status and OpenAI-shaped body, and any
extra response headers such as x-llm-d-request-dropped-reason). A transport that can send a message
unasked sets Decision.revoke when it holds the decision: request control may then end the request
early with an EPPError (flow control's in-flight eviction).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable, Protocol

from .errors import EPPError
from .rewrite import ModelNameMapper
from .usage import UsageReader

if TYPE_CHECKING:
    from ..datalayer.endpoint import Endpoint
    from ..scheduling.types import LLMRequest, SchedulingResult

__all__ = ["Decision", "EPPError", "RequestControl", "Subset"]

# The proxy's subset hint as the transport found it: a list of addresses, one comma-separated string,
# or None when the request carries none.
Subset = list[str] | str | None


@dataclass(slots=True)
class Decision:
    request: "LLMRequest"
    targets: list["Endpoint"]
    destination: str                         # "ip:port" or an ordered comma list (fallbacks)
    body: bytes | None = None                # a replacement body; None: forward the original bytes
    explanation: bytes | None = None         # JSON for the x-epp-decision header, when enabled
    result: "SchedulingResult | None" = None
    headers: list[tuple[str, str]] | None = None   # plugins' request headers (e.g. the P/D prefill host)
    tokens: int = 0                          # estimated prompt tokens, counted in flight on the target
    served_model: str | None = None          # the rewritten model name the server will answer with
    prefill: "Endpoint | None" = None        # P/D: the prefill pod, counted in flight until the answer starts
    scores: dict[str, float] | None = None   # --emit-endpoint-scores: every scored candidate's score
    usage: UsageReader | None = None         # set when the response starts
    span: object | None = None               # --tracing: the request's gateway.request span, ended by done()
    trace: object | None = None              # the web view's record of this decision (epp.observe), when on
    revoke: Callable[[EPPError], bool] | None = None   # set by the transport: ends the request now
    started: float = field(default_factory=time.perf_counter)   # when the request reached the EPP

    def response_mapper(self) -> ModelNameMapper | None:
        """Maps the rewritten model name back to the client's in the response body, when rewritten."""
        if self.served_model is None:
            return None
        return ModelNameMapper(self.served_model, self.request.model)


class RequestControl(Protocol):
    """What a transport may ask of request control (implemented by requestcontrol.director.Director)."""

    def body_required(self, method: str, path: str) -> bool:
        """Whether a request that ended at its headers still needs a body (an API path): then
        decide() is called with b"" and answers 400."""
        ...

    def decide(self, headers: dict[str, str], path: str, body: bytes | None,
               subset: Subset) -> Decision | Awaitable[Decision]:
        """The routing decision; body None means it is not known (pick on load alone). Raises EPPError."""
        ...

    def validate_body(self, path: str, body: bytes) -> None:
        """Raises EPPError when a body that arrived after the pick is not a valid request."""
        ...

    def response_started(self, decision: Decision, status: int | None, sse: bool,
                         served: str | None = None) -> list[tuple[str, str]] | None:
        """The model server's response headers arrived; returns headers to add to the response. served:
        the proxy's report of the endpoint that answered ("" when its envoy.lb metadata lacks it, None
        when there is no envoy.lb metadata)."""
        ...

    def served(self, endpoint: str) -> None:
        """The proxy reports which endpoint served the request."""
        ...

    def done(self, decision: Decision, status: int | None) -> None:
        """Once per decided request, when its stream ends (answered, failed or cancelled)."""
        ...
