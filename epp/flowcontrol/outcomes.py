"""How a request's time in flow control ended (upstream's QueueOutcome strings, the metrics' outcome
label) and why (upstream's error texts, which the client sees in the answer's message)."""
from __future__ import annotations

DISPATCHED = "Dispatched"
REJECTED_CAPACITY = "RejectedCapacity"
REJECTED_NO_ENDPOINTS = "RejectedNoEndpoints"
REJECTED_OTHER = "RejectedOther"
EVICTED_TTL = "EvictedTTL"
EVICTED_NO_ENDPOINTS = "EvictedNoEndpoints"
EVICTED_CONTEXT_CANCELLED = "EvictedContextCancelled"
EVICTED_OTHER = "EvictedOther"
NOT_YET_FINALIZED = "NotYetFinalized"   # metric label of an enqueue that was accepted

# what went wrong, for request control's translation (upstream matches its sentinel errors)
NOT_RUNNING = "not-running"
TTL_EXPIRED = "ttl-expired"
CANCELLED = "cancelled"

_REJECTED = "request rejected pre-queue"
_EVICTED = "request evicted from queue"
_TEXT = {NOT_RUNNING: "flow controller is not running", TTL_EXPIRED: "request TTL expired",
         CANCELLED: "request context cancelled"}


class Result:
    """A terminal outcome: `outcome`, the error `message` (empty when dispatched) and `why`."""

    __slots__ = ("outcome", "message", "why")

    def __init__(self, outcome: str, message: str = "", why: str | None = None) -> None:
        self.outcome = outcome
        self.message = message
        self.why = why

    @property
    def dispatched(self) -> bool:
        return self.outcome == DISPATCHED

    def __repr__(self) -> str:
        return f"Result({self.outcome}, {self.message!r})"


DISPATCHED_RESULT = Result(DISPATCHED)
CAPACITY = Result(REJECTED_CAPACITY, f"{_REJECTED}: queue at capacity")
NO_ENDPOINTS_AT_CAPACITY = Result(REJECTED_NO_ENDPOINTS, f"{_REJECTED}: no endpoints available")
TTL = Result(EVICTED_TTL, f"{_EVICTED}: request TTL expired", TTL_EXPIRED)
NO_ENDPOINTS_TTL = Result(EVICTED_NO_ENDPOINTS, f"{_EVICTED}: request TTL expired: no endpoints available",
                          TTL_EXPIRED)
CLIENT_LEFT = Result(EVICTED_CONTEXT_CANCELLED, f"{_EVICTED}: request context cancelled", CANCELLED)
SHUTDOWN_QUEUED = Result(EVICTED_OTHER, f"{_EVICTED}: flow controller is not running", NOT_RUNNING)
SHUTDOWN_NEW = Result(REJECTED_OTHER, f"{_REJECTED}: flow controller is not running", NOT_RUNNING)
