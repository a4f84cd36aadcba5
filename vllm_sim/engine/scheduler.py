"""The engine: vLLM V1's scheduling loop, one step at a time, on a clock the caller provides.

Each step: running sequences first (decodes take one token; an unfinished chunked prefill takes what is
left of the budget), preempting the most recently admitted sequence (recompute) when blocks run out; then,
if nothing was preempted, waiting requests in FCFS order while token budget, sequence slots and blocks last.
A request whose head cannot get blocks blocks the queue (no overtaking). Requests whose KV is being loaded
(CPU tier reload or a P/D pull) wait aside without holding up the queue.

The class is synchronous and deterministic: `step(now)` schedules, computes the step's duration from the
latency profile, applies the results and returns them stamped with `now + duration`. Whoever drives it
(the asyncio server, or a test) waits until then before the next call.
"""
from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass, field

from ..profiles import Profile
from .kv_cache import KVCache
from .request import Request, Status


@dataclass
class EngineConfig:
    num_gpu_blocks: int
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 131072
    offload_blocks: int = 0
    hash_seed: int = 0
    pin_timeout_s: float = 480.0       # VLLM_NIXL_ABORT_REQUEST_TIMEOUT
    max_loras: int = 0                 # distinct adapters per batch (0 = no limit)
    enable_prefix_caching: bool = True
    vocab_ids: list[int] = field(default_factory=lambda: list(range(100, 1000)))


@dataclass
class TokenOutput:
    request: Request
    new_token_ids: list[int]
    finished: bool


@dataclass
class StepOutput:
    start: float
    end: float
    outputs: list[TokenOutput]
    num_prefill_tokens: int
    num_decode_seqs: int
    num_preempted: int
    scheduled: dict[str, int]


class Engine:
    def __init__(self, cfg: EngineConfig, profile: Profile, seed: int = 0):
        self.cfg = cfg
        self.profile = profile
        self.kv = KVCache(cfg.num_gpu_blocks, cfg.block_size, cfg.offload_blocks, cfg.hash_seed,
                          cfg.enable_prefix_caching)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.pinned: dict[str, float] = {}           # request id -> expiry (blocks held for a remote decoder)
        self.pending_loads: list[Request] = []        # remote pulls the transport must perform
        self.rng = random.Random(seed)
        # token content of each block, 4 bytes per slot: what a P/D transfer moves and verifies
        self.kv_data = bytearray(cfg.num_gpu_blocks * cfg.block_size * 4)
        self.step_count = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.num_preemptions_total = 0

    # ---- requests -----------------------------------------------------------------------------------
    def add_request(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"duplicate request id {req.request_id}")
        self.requests[req.request_id] = req
        req.status = Status.WAITING
        self.waiting.append(req)

    def abort_request(self, request_id: str) -> None:
        req = self.requests.pop(request_id, None)
        if req is None:
            return
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        if req in self.pending_loads:
            self.pending_loads.remove(req)
        self.pinned.pop(request_id, None)
        self.kv.free_request(req)
        if req.status is not Status.FINISHED:
            req.status = Status.FINISHED
            req.finish_reason = "abort"

    def release_pinned(self, request_id: str) -> bool:
        """The remote decoder has read the blocks (or gave up): free them."""
        if request_id not in self.pinned:
            return False
        del self.pinned[request_id]
        req = self.requests.pop(request_id, None)
        if req is not None:
            self.kv.free_request(req)
        return True

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def num_waiting(self) -> int:
        return len(self.waiting)

    def next_wakeup(self) -> float | None:
        """Earliest engine time at which something happens with no new input (loads, pin expiry)."""
        times = [r.load_ready_at for r in self.waiting if r.status is Status.LOADING and r.load_ready_at is not None]
        times += list(self.pinned.values())
        return min(times) if times else None

    def has_schedulable(self, now: float) -> bool:
        if self.running:
            return True
        for r in self.waiting:
            if r.status is Status.WAITING:
                return True
            if r.status is Status.LOADING and r.load_ready_at is not None and r.load_ready_at <= now:
                return True
        return False

    # ---- loads ---------------------------------------------------------------------------------------
    def finish_remote_load(self, request_id: str, ok: bool, now: float) -> None:
        req = self.requests.get(request_id)
        if req is None or req.status is not Status.LOADING:
            return
        if ok:
            req.load_ready_at = now
        else:   # as vLLM on a failed pull: recompute what was not found locally
            req.num_computed_tokens -= req.load_tokens
            req.load_tokens = 0
            req.load_ready_at = now
        req.load_external = False

    def _start_load(self, req: Request, now: float, gpu: list[int], cpu_keys: list[int]) -> bool:
        """Allocate blocks for the whole request and start loading the KV it does not compute."""
        hit_tokens = len(gpu) * self.cfg.block_size
        if req.remote_prefill is not None:
            load_tokens = max(0, req.num_prompt_tokens - 1 - hit_tokens)
        else:
            load_tokens = len(cpu_keys) * self.cfg.block_size
        if not self.kv.allocate(req, hit_tokens + load_tokens, gpu):
            return False
        req.had_load = True
        req.num_computed_tokens = hit_tokens + load_tokens
        if req.remote_prefill is not None and req.num_preemptions == 0:
            req.num_cached_tokens = hit_tokens + load_tokens   # vLLM counts externally loaded tokens as cached
        req.load_tokens = load_tokens
        req.status = Status.LOADING
        if req.remote_prefill is not None:
            req.load_external = True
            req.load_ready_at = None
            self.pending_loads.append(req)
        else:
            self.kv.touch_cpu(cpu_keys)
            req.load_ready_at = now + self.profile.reload_time(load_tokens)
        return True

    def take_pending_loads(self) -> list[Request]:
        out, self.pending_loads = self.pending_loads, []
        return out

    # ---- the step ------------------------------------------------------------------------------------
    def _preempt(self, now: float) -> Request:
        victim = self.running.pop()
        self.kv.free_request(victim)
        victim.num_computed_tokens = 0
        victim.status = Status.WAITING
        victim.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.appendleft(victim)
        return victim

    def _expire_pins(self, now: float) -> None:
        for rid, exp in list(self.pinned.items()):
            if exp <= now:
                self.release_pinned(rid)

    def step(self, now: float) -> StepOutput | None:
        self._expire_pins(now)
        budget = self.cfg.max_num_batched_tokens
        scheduled: dict[str, int] = {}
        sched_reqs: list[Request] = []
        preempted: list[Request] = []

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if n <= 0:
                i += 1
                continue
            ok = True
            while not self.kv.allocate(req, req.num_computed_tokens + n):
                victim = self._preempt(now)
                preempted.append(victim)
                if victim is req:
                    ok = False
                    break
            if not ok:
                break
            scheduled[req.request_id] = n
            sched_reqs.append(req)
            budget -= n
            i += 1

        if not preempted:
            self._schedule_waiting(now, budget, scheduled, sched_reqs)

        if not sched_reqs:
            if not self.running and self._break_load_deadlock():
                return self.step(now)
            return None
        return self._execute(now, sched_reqs, scheduled, len(preempted))

    def _break_load_deadlock(self) -> bool:
        """Requests whose KV was loaded hold blocks while they wait; if they have taken every block, none
        can get the one more it needs and nothing runs to free any. Recompute the latest of them."""
        holders = [r for r in self.waiting if r.status is Status.WAITING and self.kv.req_blocks.get(r.request_id)]
        if not holders:
            return False
        victim = holders[-1]
        self.kv.free_request(victim)
        victim.num_computed_tokens = 0
        victim.num_preemptions += 1
        self.num_preemptions_total += 1
        return True

    def _schedule_waiting(self, now: float, budget: int, scheduled: dict, sched_reqs: list) -> None:
        bs = self.cfg.block_size
        blocked = False     # once the head cannot get blocks, only requests already holding blocks may pass
        idx = 0
        while idx < len(self.waiting) and budget > 0 and len(self.running) < self.cfg.max_num_seqs:
            req = self.waiting[idx]
            holds_blocks = bool(self.kv.req_blocks.get(req.request_id))
            if req.status is Status.LOADING:
                if req.load_ready_at is None or req.load_ready_at > now:
                    idx += 1
                    continue
                for i, b, _ in self.kv.commit(req):
                    self._write_block(req, i, b)
                req.status = Status.WAITING
            elif blocked and not holds_blocks:
                idx += 1
                continue
            elif self._lora_blocked(req):
                idx += 1            # as vLLM: later requests with an active (or no) adapter may go ahead
                continue
            elif req.num_computed_tokens == 0:
                gpu, cpu = self.kv.lookup(req)
                hit_tokens = len(gpu) * bs
                if req.num_cached_tokens < 0:
                    req.num_cached_tokens = hit_tokens + len(cpu) * bs
                    self.kv.record_query(req.num_tokens, req.num_cached_tokens)
                remote = req.remote_prefill is not None and req.num_preemptions == 0
                if cpu or (remote and req.num_prompt_tokens - 1 - hit_tokens > 0):
                    if not self._start_load(req, now, gpu, cpu):
                        blocked = True
                    idx += 1
                    continue
                n = min(req.num_tokens - hit_tokens, budget)
                if not self.kv.allocate(req, hit_tokens + n, gpu):
                    blocked = True
                    idx += 1
                    continue
                req.num_computed_tokens = hit_tokens
                self._admit(idx, req, n, now, scheduled, sched_reqs)
                budget -= n
                continue
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self.kv.allocate(req, req.num_computed_tokens + n):
                blocked = True
                idx += 1
                continue
            self._admit(idx, req, n, now, scheduled, sched_reqs)
            budget -= n

    def _lora_blocked(self, req: Request) -> bool:
        if not req.lora_id or not self.cfg.max_loras:
            return False
        active = {r.lora_id for r in self.running if r.lora_id}
        return req.lora_id not in active and len(active) >= self.cfg.max_loras

    def _admit(self, idx: int, req: Request, n: int, now: float, scheduled, sched_reqs) -> None:
        del self.waiting[idx]
        req.status = Status.RUNNING
        if req.first_scheduled_time is None:
            req.first_scheduled_time = now
        self.running.append(req)
        scheduled[req.request_id] = n
        sched_reqs.append(req)

    def _execute(self, now: float, reqs: list[Request], scheduled: dict[str, int], npre: int) -> StepOutput:
        prefill_tokens = decode_seqs = kv_read = 0
        for r in reqs:
            n = scheduled[r.request_id]
            if r.num_computed_tokens >= r.num_prompt_tokens and n == 1:
                decode_seqs += 1
            else:
                prefill_tokens += n
            kv_read += r.num_computed_tokens
        end = now + self.profile.step_time(prefill_tokens, decode_seqs, kv_read)
        self.step_count += 1
        outputs: list[TokenOutput] = []
        for r in reqs:
            n = scheduled[r.request_id]
            r.num_computed_tokens += n
            for idx, b, _ in self.kv.commit(r):
                self._write_block(r, idx, b)
            if r.num_computed_tokens < r.num_tokens:
                continue          # a prefill chunk: no token sampled yet
            tok = self._sample(r)
            r.output_token_ids.append(tok)
            self.generation_tokens_total += 1
            r.token_times.append(end)
            if r.first_token_time is None:
                r.first_token_time = end
                self.prompt_tokens_total += r.num_prompt_tokens
            r.last_token_time = end
            done = self._check_stop(r, tok)
            if done:
                self._finish(r, end)
            outputs.append(TokenOutput(r, [tok], done))
        return StepOutput(now, end, outputs, prefill_tokens, decode_seqs, npre, scheduled)

    def _sample(self, r: Request) -> int:
        rng = r.rng()
        if (not r.ignore_eos and r.eos_token_id is not None and r.eos_prob > 0
                and len(r.output_token_ids) > 0 and rng.random() < r.eos_prob):
            return r.eos_token_id
        return rng.choice(self.cfg.vocab_ids)

    def _check_stop(self, r: Request, tok: int) -> bool:
        if r.remote_decode:
            r.finish_reason = "length"
            return True
        if not r.ignore_eos and tok == r.eos_token_id:
            r.finish_reason = "stop"
            return True
        if len(r.output_token_ids) >= r.max_tokens or r.num_tokens >= self.cfg.max_model_len:
            r.finish_reason = "length"
            return True
        return False

    def _finish(self, r: Request, now: float) -> None:
        r.status = Status.FINISHED
        r.finished_time = now
        self.running.remove(r)
        if r.remote_decode:
            self._write_blocks(r)
            self.pinned[r.request_id] = now + self.cfg.pin_timeout_s
            return        # blocks stay allocated until pulled or expired
        self.kv.free_request(r)
        del self.requests[r.request_id]

    # ---- block content (for P/D transfers) -------------------------------------------------------------
    def _write_block(self, r: Request, idx: int, b: int) -> None:
        bs = self.cfg.block_size
        toks = r.tokens(idx * bs, min((idx + 1) * bs, r.num_computed_tokens))
        toks += [0] * (bs - len(toks))
        struct.pack_into(f"<{bs}I", self.kv_data, b * bs * 4, *toks)

    def _write_blocks(self, r: Request) -> None:
        for idx, b in enumerate(self.kv.req_blocks.get(r.request_id, ())):
            self._write_block(r, idx, b)

    def block_bytes(self) -> int:
        return self.cfg.block_size * 4

    def verify_blocks(self, r: Request, upto_tokens: int) -> bool:
        """After a pull: do the request's blocks hold its own tokens up to `upto_tokens`?"""
        bs = self.cfg.block_size
        for idx, b in enumerate(self.kv.req_blocks.get(r.request_id, ())):
            lo, hi = idx * bs, min((idx + 1) * bs, upto_tokens)
            if lo >= hi:
                break
            got = struct.unpack_from(f"<{hi - lo}I", self.kv_data, b * bs * 4)
            if list(got) != r.prompt_token_ids[lo:hi]:
                return False
        return True

    # ---- introspection ---------------------------------------------------------------------------------
    def kv_usage(self) -> float:
        return self.kv.usage()

    def check_invariants(self) -> None:
        self.kv.check_invariants()
        assert len(self.running) <= self.cfg.max_num_seqs
        for r in self.running:
            assert r.status is Status.RUNNING
            assert r.num_computed_tokens <= r.num_tokens
        for rid in self.pinned:
            assert rid in self.kv.req_blocks
