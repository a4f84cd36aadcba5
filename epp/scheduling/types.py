"""What the scheduler works on: the parsed request, per-request cycle state, the result."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..datalayer.endpoint import Endpoint


@dataclass(slots=True)
class LLMRequest:
    request_id: str
    model: str                # as the client named it
    target_model: str         # what the model server will be asked for (after any rewrite)
    api: str                  # "completions" | "chat" | "responses" | "" (no body)
    prompt: bytes = b""       # the text prefix-affinity hashes (chat: the JSON of the messages)
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    priority: int = 0
    cache_salt: str = ""
    stream: bool = False
    tokenization: list | None = None   # the token-producer's [ids, rest of text, position], if it ran
    # what plugins publish about this request for each other (a session id) or keep between its hooks
    # (what a producer counted in flight); created on first use
    attrs: dict[str, Any] | None = None


DEFER = "defer"  # cycle-state key: a call_soon-like function for work the answer need not wait for
CANDIDATES = "candidates"  # cycle-state key: the endpoints this request was scheduled over (before any filter)
HIT_RATIO = "prefix/hit-ratio"  # cycle-state key: the prefix hit ratio of the primary pick, for its metric
PREDICTION = "prefix/prediction"  # cycle-state key: the prefix producer's CachePrediction for the pick
SERVED_ATTR = "destination-endpoint-served"  # request attribute: the proxy's report of the endpoint that served
HIT_SOURCE = "prefix/hit-source"  # cycle-state key: (plugin name, plugin type) of the producer that set it


class CycleState(dict):
    """Data plugins share during one request's scheduling (e.g. prefix keys computed once)."""


@dataclass(slots=True)
class ProfileResult:
    targets: list[Endpoint]                      # picked, most preferred first
    # endpoint address -> {scorer name: raw score}, plus "total"; filled only when explaining
    scores: dict[str, dict[str, float]] | None = None
    filtered: dict[str, int] | None = None       # filter name -> how many it removed (explaining or recording)
    # recording (the web view): (candidates scored, [(scorer name, its scores)], weighted totals), aligned lists
    # kept as computed, so a record costs no per-candidate work on the request path
    raw: tuple[list[Endpoint], list[tuple[str, tuple[float, ...]]], list[float]] | None = None
    # the candidates the picker chose from and their weighted score totals (for --emit-endpoint-scores)
    candidates: Sequence[Endpoint] | None = None
    totals: list[float] | None = None

    def endpoint_scores(self) -> dict[str, float]:
        """address -> weighted score of every candidate this profile scored (upstream's ScoredCandidates)."""
        if not self.candidates or self.totals is None:
            return {}
        return {ep.address: total for ep, total in zip(self.candidates, self.totals)}


@dataclass(slots=True)
class CachePrediction:
    """How many of the prompt's tokens a prefix-match producer expects the chosen pod to hold (P/D: the
    prefill pod, which computes the prompt). Set from the producer's pre-request hook; compared with the
    cached tokens the model server reports, it tells whether prefix-aware routing still sees the caches."""
    plugin_type: str
    plugin_name: str
    endpoint: str
    cached_tokens: int
    estimated: bool = False   # counted in ~4-byte pseudo-tokens (no tokenizer), not in the model's tokens


@dataclass(slots=True)
class SchedulingResult:
    profiles: dict[str, ProfileResult]
    primary: str                                 # the profile whose targets the proxy routes to
    headers: list[tuple[str, str]] | None = None # set on the request by pre-request hooks (e.g. P/D)
    reasons: dict[str, str] | None = None        # why the handler decided as it did (explaining)
    prefill: str | None = None                   # the P/D handler's prefill profile, when it names one
    prediction: CachePrediction | None = None    # cached tokens a prefix producer expects on the pick
    destination: str | None = None               # where the proxy sends it, when not the targets' addresses

    @property
    def targets(self) -> list[Endpoint]:
        return self.profiles[self.primary].targets

    def prefill_target(self) -> Endpoint | None:
        """The prefill pod of a disaggregated request (None when decoding alone)."""
        if self.prefill is None or self.prefill == self.primary:
            return None
        p = self.profiles.get(self.prefill)
        return p.targets[0] if p is not None and p.targets else None

    def chosen(self) -> list[Endpoint]:
        """The endpoints that will hold this prompt's KV: the pick and, with P/D, the prefill pod."""
        out = [self.targets[0]] if self.targets else []
        pre = self.prefill_target()
        if pre is not None:
            out.append(pre)
        return out


class MatchInfo:
    """What a prefix-match producer found for one request."""

    __slots__ = ("keys", "matched", "block_tokens", "blocks")

    def __init__(self, keys: list[int], matched: dict[str, float], block_tokens: int,
                 blocks: dict[str, int] | None = None) -> None:
        self.keys = keys              # this request's block keys
        self.matched = matched        # endpoint address -> blocks held from block 0 (tier-weighted if precise)
        self.block_tokens = block_tokens
        self.blocks = blocks          # precise only: unweighted blocks held (None: approximate)

    def cached_tokens(self, address: str) -> int:
        """Tokens of the prompt the endpoint holds: whole blocks, whatever their tier."""
        held = self.blocks if self.blocks is not None else self.matched
        return int(held.get(address, 0)) * self.block_tokens

    @property
    def total(self) -> int:
        return len(self.keys)


# ---------------------------------------------------------------- what flow-control policies see
# epp/flowcontrol hands its queued items, flow queues and bands to the policy plugins as these views.

class QueueItemView:
    """A request waiting in flow control."""

    __slots__ = ()
    request_id: str
    fairness_id: str
    priority: int
    size: int                # request body bytes
    enqueue_time: float      # monotonic seconds
    effective_ttl: float     # its queue-wait budget in seconds; 0 = none
    seq: int                 # arrival order, unique: breaks ties


class FlowQueueView:
    """One flow's queue (a fairness id in one band), ordered by the band's ordering policy."""

    __slots__ = ()
    fairness_id: str

    def __len__(self) -> int:
        raise NotImplementedError

    def peek(self) -> QueueItemView | None:
        """The item the ordering policy puts first; None when empty."""
        raise NotImplementedError

    def head_key(self) -> tuple | None:
        """The ordering policy's key of that item (comparable across the flows of one band)."""
        raise NotImplementedError


class BandView:
    """A priority band: its flows."""

    __slots__ = ()
    priority: int

    def flow_ids(self) -> list[str]:
        """Every flow registered in the band, with queued items or idle (until garbage-collected)."""
        raise NotImplementedError

    def flow(self, fairness_id: str) -> FlowQueueView | None:
        raise NotImplementedError

    def active_flows(self) -> list[FlowQueueView]:
        """The flows that hold queued items."""
        raise NotImplementedError
