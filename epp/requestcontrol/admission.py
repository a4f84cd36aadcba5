"""Request control's side of flow control (upstream's FlowControlAdmissionController): a request's flow
(fairness id x priority) and size go in, flow control's outcome comes back as nothing (dispatched:
go on to scheduling) or as the EPPError the client gets, with upstream's status and reason header:

    RejectedCapacity                      429 rejected-saturated
    RejectedNoEndpoints                   503 rejected-no-endpoints
    EvictedTTL                            429 rejected-ttl-expired (503 rejected-no-endpoints if the pool
                                          is empty at that moment)
    EvictedNoEndpoints                    503 rejected-no-endpoints
    EvictedContextCancelled               503 rejected-context-cancelled (nobody reads it)
    Rejected/EvictedOther, not running    503 rejected-shutting-down
    Rejected/EvictedOther, anything else  500
    in-flight eviction                    429 evicted, body `request evicted by flow control`
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from .. import headers as H
from ..flowcontrol import outcomes as O
from ..flowcontrol.controller import FlowController
from ..scheduling.types import LLMRequest
from .errors import EPPError

SATURATED = "rejected-saturated"
NO_ENDPOINTS = "rejected-no-endpoints"
TTL_EXPIRED = "rejected-ttl-expired"
CONTEXT_CANCELLED = "rejected-context-cancelled"
SHUTTING_DOWN = "rejected-shutting-down"
EVICTED = "evicted"


def reason(value: str) -> list[tuple[str, str]]:
    return [(H.DROPPED_REASON, value)]


def fairness_id(headers: dict[str, str]) -> str:
    """x-llm-d-inference-fairness-id, else its older name, else default-flow (an empty value too)."""
    v = headers.get(H.FAIRNESS_ID)
    if v is None:
        v = headers.get(H.FAIRNESS_ID_OLD)
    return v or H.DEFAULT_FAIRNESS_ID


def translate(r: O.Result, pool_empty: Callable[[], bool]) -> EPPError | None:
    """The client's answer for an outcome; None when dispatched."""
    o, msg = r.outcome, r.message
    if o == O.DISPATCHED:
        return None
    if o == O.REJECTED_CAPACITY:
        return EPPError(429, msg, reason(SATURATED))
    if o == O.REJECTED_NO_ENDPOINTS:
        return EPPError(503, "no endpoints available: " + msg, reason(NO_ENDPOINTS))
    if o == O.EVICTED_NO_ENDPOINTS or (o == O.EVICTED_TTL and pool_empty()):
        return EPPError(503, "request timed out in queue and no endpoints are available: " + msg, reason(NO_ENDPOINTS))
    if o == O.EVICTED_TTL:
        return EPPError(429, "request timed out in queue: " + msg, reason(TTL_EXPIRED))
    if o == O.EVICTED_CONTEXT_CANCELLED:
        return EPPError(503, "client disconnected: " + msg, reason(CONTEXT_CANCELLED))
    if r.why == O.NOT_RUNNING:
        return EPPError(503, "flow controller shutting down: " + msg, reason(SHUTTING_DOWN))
    if r.why == O.TTL_EXPIRED:
        return translate(O.Result(O.EVICTED_TTL, msg, r.why), pool_empty)
    if r.why == O.CANCELLED:
        return translate(O.Result(O.EVICTED_CONTEXT_CANCELLED, msg, r.why), pool_empty)
    return EPPError(500, "internal flow control error: " + (msg or "request rejected by flow control"))


def eviction_error() -> EPPError:
    return EPPError(429, "request evicted by flow control", reason(EVICTED), plain=True)


class FlowAdmission:
    def __init__(self, controller: FlowController) -> None:
        self.controller = controller
        self.evicts = controller.inflight is not None

    def admit(self, request: LLMRequest, size: int) -> Awaitable[None] | None:
        """None: go on now. An awaitable: the request waits in its queue (cancel it if the client
        leaves). Raises EPPError when the request is not admitted."""
        fc = self.controller
        r = fc.submit(request.request_id, fairness_id(request.headers), request.priority, size,
                      request.model, request.target_model)
        if isinstance(r, O.Result):
            err = translate(r, fc.pool_empty)
            if err is not None:
                raise err
            return None
        return self._wait(r)

    async def _wait(self, fut: asyncio.Future) -> None:
        r = await fut
        err = translate(r, self.controller.pool_empty)
        if err is not None:
            raise err

    def settled(self) -> None:
        """A request released from its queue has been scheduled (or failed): the next may go."""
        self.controller.settled()

    def dispatched(self, key, priority: int, evict: Callable[[], None]) -> None:
        """A request went to a model server (eviction tracks it until done())."""
        self.controller.track(key, priority, evict)

    def done(self, key) -> None:
        """A dispatched request's stream ended: capacity may have freed."""
        self.controller.untrack(key)
        self.controller.kick()

    def capacity_changed(self) -> None:
        self.controller.kick()

    def set_desired_priorities(self, priorities: set[int]) -> None:
        self.controller.set_desired_priorities(priorities)
