"""A request as the engine sees it: token ids, progress, and the timestamps metrics need."""
from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from typing import Any


class Status(enum.Enum):
    WAITING = "waiting"
    LOADING = "loading"          # KV being pulled (remote prefill) or reloaded (CPU tier)
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    arrival_time: float
    ignore_eos: bool = True
    eos_token_id: int | None = None
    eos_prob: float = 0.0
    seed: int | None = None
    lora_id: int = 0
    lora_name: str | None = None
    # P/D: this request prefills for a remote decoder (finish after one token, pin blocks)
    remote_decode: bool = False
    # P/D: KV to pull from a remote prefill engine instead of computing it
    remote_prefill: dict[str, Any] | None = None

    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = -1          # prefix-cache hit on first schedule (vLLM's cached_tokens)
    status: Status = Status.WAITING
    finish_reason: str | None = None
    num_preemptions: int = 0
    # loading state
    load_ready_at: float | None = None   # internal (CPU) reload completes at this engine time
    load_tokens: int = 0                 # tokens that the load brings
    load_external: bool = False          # completion reported by the transport (P/D)
    had_load: bool = False
    reported_cached_tokens: int | None = None   # set by the P/D sidecar: the prefill leg's figure
    # timestamps in engine time
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    _rng: random.Random | None = None
    _block_hashes: list[int] = field(default_factory=list)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_at(self, i: int) -> int:
        p = len(self.prompt_token_ids)
        return self.prompt_token_ids[i] if i < p else self.output_token_ids[i - p]

    def tokens(self, lo: int, hi: int) -> list[int]:
        """Token ids [lo, hi) of prompt + output, by slicing (blocks are keyed and written every step:
        a per-token loop was most of a step's cost)."""
        p = len(self.prompt_token_ids)
        if hi <= p:
            return self.prompt_token_ids[lo:hi]
        if lo >= p:
            return self.output_token_ids[lo - p:hi - p]
        return self.prompt_token_ids[lo:] + self.output_token_ids[:hi - p]

    def rng(self) -> random.Random:
        if self._rng is None:
            self._rng = random.Random(self.seed if self.seed is not None else self.request_id)
        return self._rng

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED
