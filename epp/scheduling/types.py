"""What the scheduler works on: the parsed request, per-request cycle state, the result."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


DEFER = "defer"  # cycle-state key: a call_soon-like function for work the answer need not wait for
CANDIDATES = "candidates"  # cycle-state key: the endpoints this request was scheduled over (before any filter)
HIT_RATIO = "prefix/hit-ratio"  # cycle-state key: the prefix hit ratio of the primary pick, for its metric


class CycleState(dict):
    """Data plugins share during one request's scheduling (e.g. prefix keys computed once)."""


@dataclass(slots=True)
class ProfileResult:
    targets: list[Endpoint]                      # picked, most preferred first
    # endpoint address -> {scorer name: raw score}, plus "total"; filled only when explaining
    scores: dict[str, dict[str, float]] | None = None
    filtered: dict[str, int] | None = None       # filter name -> how many it removed (explaining)


@dataclass(slots=True)
class SchedulingResult:
    profiles: dict[str, ProfileResult]
    primary: str                                 # the profile whose targets the proxy routes to
    headers: list[tuple[str, str]] | None = None # set on the request by pre-request hooks (e.g. P/D)
    reasons: dict[str, str] | None = None        # why the handler decided as it did (explaining)
    prefill: str | None = None                   # the P/D handler's prefill profile, when it names one

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
