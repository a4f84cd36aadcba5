"""Our latency model, shared by epp-predicted-latency-scorer and epp-adaptive-pd-decider: for a request
and an endpoint, the TTFT it would see there and what its prefill would add to the endpoint's decode
steps, learned online from the TTFTs the EPP observes. No ML sidecar: a two-parameter fit per endpoint.

For a request r and an endpoint p:

    u(p)    = prompt tokens - tokens of the prompt p holds (the prefix-match producer)   r's own prefill
    Q(p)    = uncached tokens of the requests sent to p whose first token has not come yet (the EPP's
              own in-flight accounting: moved at every pick and every first token, between scrapes)
              + max(0, waiting(p) - those requests - ours that started since the scrape) x mean u
              (queued on p by others: the scraped queue, for another replica's or a direct client's
              work; our own requests that were waiting when it was scraped do not count twice)
    W(p)    = Q(p) + u(p)                                                  prefill work up to r's first token
    TTFT(p) = a(p) + b(p) x W(p)    [+ failurePenalty while p's last answer failed]
    cost(p) = TTFT(p) + (computeWeight + evictionWeight x occupancy(p)) x b_pool x u(p)   what picks rank on
    ITL(p)  = d(p) + min(u(p), C) x b(p)    while r prefills beside p's running decodes (+0 when none run)

a(p) is the fixed part (network, a step, with P/D the KV transfer) and b(p) seconds per prefill token
(1 / prefill throughput, the decodes that share each step amortised in). They are an exponentially
weighted least-squares fit of p's observed (W, TTFT) pairs: each pick records W(p) of the chosen
endpoint (with P/D the prefill pod, whose work it is), and the first chunk of the streamed answer
(ResponseFirstChunk) adds the pair with weight 1 after decaying the older ones by `forget`. An endpoint
with fewer than `warmup` (decayed) observations is shrunk toward the pool's fit (the mean of the fitted
endpoints), and the pool's toward the prior (a0, 1 / prefillTokensPerSecond). d(p) is an EWMA of the
observed decode time per output token, (answer end - first chunk) / (output tokens - 1). C is
maxNumBatchedTokens: what one step prefills beside the running decodes.

An endpoint whose answer failed (5xx, or no status at all) is predicted failurePenalty slower until that
long after the failure, so a restarting pod is avoided before its metrics go stale.

cost(p) adds to r's own wait the GPU time r spends on p that a pod holding the prefix would not spend,
priced at the pool's mean rate b_pool: prefill work done twice delays every later request, and on a pod
whose cache is full (occupancy: our record of it, entries / capacity, from the approximate producer; 0
with the precise one) the new blocks evict others' prefixes. With weights w and e a prefix stays on its
pod until that pod's queue is about (1 + w + e x occupancy) x u longer than another's (w = e = 0: pure
TTFT; ties go to the cache).

Units: tokens are the token-producer's when it has a tokenizer, else the prompt's bytes / 4 (the
approximate producer's blocks are counted the same way), so u and Q always agree. Times are the EPP's
wall clock.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ...metrics import LiveCollector
from ..framework import (
    BindsPlugins,
    EndpointLifecycle,
    Plugin,
    PrefixMatchProducer,
    PreRequest,
    ResponseComplete,
    ResponseFirstChunk,
)
from ..types import SchedulingResult
from .approx_prefix_cache_producer import (
    ApproxPrefixCacheProducer,
    find_prefix_producer,
)
from .token_producer import TokenProducer

_EPS = 1e-12


def _monotonic() -> float:
    return time.monotonic()


class Estimate:
    """What the model predicts for one request on one endpoint."""
    __slots__ = ("uncached", "work", "ttft", "itl", "stall", "cost")

    def __init__(self, uncached: int, work: float, ttft: float, itl: float, stall: float, cost: float) -> None:
        self.uncached, self.work, self.ttft, self.itl, self.stall = uncached, work, ttft, itl, stall
        self.cost = cost


class _Pod:
    """What the model knows of one endpoint."""
    __slots__ = ("sw", "sx", "sy", "sxx", "sxy", "a", "b", "fitted", "pending_tokens", "pending_n", "answering",
                 "d", "d_seen", "down_until", "observations", "failures", "pred_ewma", "obs_ewma", "err_ewma",
                 "started", "decoding")

    def __init__(self) -> None:
        self.sw = self.sx = self.sy = self.sxx = self.sxy = 0.0
        self.a = self.b = 0.0
        self.fitted = False
        self.pending_tokens = 0.0     # uncached tokens routed here, first token not seen yet
        self.pending_n = 0
        self.answering = 0            # requests here past their first token
        self.decoding = 0             # requests whose answer this pod streams, from the pick to the end
        self.d = 0.0                  # seconds per output token (EWMA)
        self.d_seen = False
        self.down_until = 0.0
        self.observations = 0
        self.failures = 0
        self.pred_ewma = self.obs_ewma = self.err_ewma = 0.0
        self.started: deque[float] = deque(maxlen=256)   # clock of our recent first chunks here

    def started_since(self, t: float) -> int:
        n = 0
        for x in reversed(self.started):
            if x <= t:
                break
            n += 1
        return n

    def observe(self, x: float, y: float, forget: float) -> None:
        self.sw = self.sw * forget + 1.0
        self.sx = self.sx * forget + x
        self.sy = self.sy * forget + y
        self.sxx = self.sxx * forget + x * x
        self.sxy = self.sxy * forget + x * y
        self.observations += 1
        sw, sx, sy = self.sw, self.sx, self.sy
        var = sw * self.sxx - sx * sx
        b = (sw * self.sxy - sx * sy) / var if var > 1e-9 * sw * self.sxx else -1.0
        a = (sy - b * sx) / sw
        if b <= 0.0 or a < 0.0:
            # no spread in W yet, or noise that tilts the line: keep the intercept (never above the mean
            # TTFT) and put the rest on the slope, through the weighted means
            a = min(max(self.a, 0.0), sy / sw) if self.fitted else 0.0
            b = max(_EPS, (sy - a * sw) / sx) if sx > 0 else self.b
        self.a, self.b, self.fitted = a, b, True

    def track(self, predicted: float, observed: float) -> None:
        """The predicted and observed TTFT of one request, for the metrics (EWMA, the first one as is)."""
        k = 0.1 if self.observations > 1 else 1.0
        self.pred_ewma += k * (predicted - self.pred_ewma)
        self.obs_ewma += k * (observed - self.obs_ewma)
        self.err_ewma += k * (abs(predicted - observed) - self.err_ewma)


class _InFlight:
    """One request between its pick and its end."""
    __slots__ = ("prefill", "decode", "uncached", "work", "predicted", "first")

    def __init__(self, prefill: str, decode: str, est: Estimate) -> None:
        self.prefill, self.decode = prefill, decode        # where it prefills, where it decodes (P/D: two pods)
        self.uncached, self.work, self.predicted = est.uncached, est.work, est.ttft
        self.first = 0.0                                   # clock at its first chunk; 0 before


class LatencyModel(Plugin, PreRequest, ResponseFirstChunk, ResponseComplete, EndpointLifecycle, BindsPlugins):
    """Not configured on its own: the scorer or the decider that owns it is (their parameters set it up)."""

    type_name = "epp-latency-model"

    def __init__(self, name: str | None = None, prefix_producer: str = "", prefill_tokens_per_s: float = 10_000.0,
                 a0: float = 0.02, forget: float = 0.97, warmup: float = 4.0, max_batched_tokens: int = 8192,
                 failure_penalty: float = 2.0, compute_weight: float = 1.0, evict_weight: float = 0.0,
                 kv_full: float = 0.9, clock=None) -> None:
        super().__init__(name)
        self.producer_name = prefix_producer
        self.producer: PrefixMatchProducer | None = None
        self.tokens: TokenProducer | None = None
        self.b0 = 1.0 / prefill_tokens_per_s
        self.a0 = a0
        self.forget = forget
        self.warmup = warmup
        self.chunk = max_batched_tokens
        self.failure_penalty = failure_penalty
        self.compute_weight = compute_weight
        self.evict_weight = evict_weight
        # looked up at each call, not bound here: the planner (epp_plan/vtime.py) points time.monotonic at
        # its virtual clock while a simulation runs; a bound reference kept the wall clock and learned a
        # decode time per token of ~0.5 ms there (the simulated ITL was 18 ms)
        self.clock = clock if clock is not None else _monotonic
        self.pods: dict[str, _Pod] = {}
        self.mean_uncached = 0.0
        self.mean_output = 0.0        # output tokens per answer (EWMA, from usage)
        self.kv_full = kv_full
        self._inflight: dict[int, _InFlight] = {}    # id(request) -> what it was booked as
        self._key = f"latency/{self.name}"
        self._pool = (a0, self.b0)
        self._pool_dirty = True
        self._observations = 0
        _Collector.track(self)

    # ------------------------------------------------------------------ configuration

    def bind(self, plugins: dict) -> None:
        if self.producer is None:
            self.producer = find_prefix_producer(plugins, self.producer_name)
        found = [p for p in plugins.values() if isinstance(p, TokenProducer) and p.real]
        self.tokens = found[0] if found else None

    def own_producer(self) -> ApproxPrefixCacheProducer | None:
        """When no producer is configured: one of our own (the owner lists it as a sub-plugin)."""
        if self.producer is None:
            self.producer = ApproxPrefixCacheProducer(name=f"{self.name}/producer")
            return self.producer
        return None

    # ------------------------------------------------------------------ prediction

    def _pod(self, address: str) -> _Pod:
        pod = self.pods.get(address)
        if pod is None:
            pod = self.pods[address] = _Pod()
            self._pool_dirty = True
        return pod

    def pool_fit(self) -> tuple[float, float]:
        if self._pool_dirty:
            fitted = [p for p in self.pods.values() if p.sw >= self.warmup]
            if fitted:
                self._pool = (sum(p.a for p in fitted) / len(fitted), sum(p.b for p in fitted) / len(fitted))
            else:
                self._pool = (self.a0, self.b0)
            self._pool_dirty = False
        return self._pool

    def fit(self, pod: _Pod, pool: tuple[float, float] | None = None) -> tuple[float, float]:
        """(a, b) of an endpoint, shrunk toward the pool's while it has few observations (pool: the
        pool's fit when the caller has it already)."""
        pa, pb = pool or self.pool_fit()
        if not pod.fitted:
            return pa, pb
        w, k = pod.sw, self.warmup
        if w >= k:
            return pod.a, pod.b
        return (w * pod.a + (k - w) * pa) / k, (w * pod.b + (k - w) * pb) / k

    def prompt_tokens(self, state, request) -> int:
        if self.tokens is not None:
            n = self.tokens.count(state, request)
            if n is not None:
                return n
        return (len(request.prompt) + 3) // 4

    def estimates(self, state, request, endpoints: Sequence) -> list[Estimate]:
        """One Estimate per endpoint (kept in the cycle state: the scorer, the decider and the pick's
        bookkeeping share them)."""
        cache = state.get(self._key)
        if cache is None:
            cache = state[self._key] = {}
        missing = [ep for ep in endpoints if ep.address not in cache]
        if missing:
            self._estimate(cache, state, request, missing)
        return [cache[ep.address] for ep in endpoints]

    def _estimate(self, cache: dict, state, request, endpoints: Sequence) -> None:
        """The model's formulas (docs/predicted-latency.md) for each endpoint, into cache.

        One loop with everything it reads bound once (the pool's fit, the producer's matches, the
        parameters): `python -m hack.bench_decide --config config/default.yaml --endpoints 64` (decide +
        response hooks) measured 165 us per request with a call per endpoint per step, 139 us so;
        upstream's profile (config/approx-capped.yaml) takes 65 us there."""
        prompt = self.prompt_tokens(state, request)
        info = self.producer.match_info(state, request) if self.producer is not None else None
        if info is not None:
            held = info.blocks if info.blocks is not None else info.matched
            block_tokens = info.block_tokens
        else:
            held, block_tokens = {}, 0
        now = self.clock()
        mean_u = self.mean_uncached
        occ = getattr(self.producer, "occupancy", None) if self.evict_weight else None
        pool = self.pool_fit()
        pb = pool[1]
        fit, pods, kv_full, chunk = self.fit, self.pods, self.kv_full, self.chunk
        mean_output, penalty = self.mean_output, self.failure_penalty
        compute, evict = self.compute_weight, self.evict_weight
        for ep in endpoints:
            address = ep.address
            uncached = prompt - int(held.get(address, 0)) * block_tokens
            if uncached < 0:
                uncached = 0
            pod = pods.get(address) or self._pod(address)
            a, b = fit(pod, pool)
            m = ep.metrics
            others = m.waiting - pod.pending_n
            if others > 0 and pod.started:
                others -= pod.started_since(m.updated)
            work = pod.pending_tokens + (others * mean_u if others > 0 else 0.0) + uncached
            ttft = a + b * work
            if m.kv_usage >= kv_full and pod.d_seen:
                # the pod's KV cache is full: what waits there starts only as running requests finish and
                # free their blocks, one request's lifetime (d x mean output) per running batch (Little's law)
                ahead = pod.pending_n + (others if others > 0 else 0)
                slots = a + ahead * pod.d * mean_output / max(1.0, m.running)
                if slots > ttft:
                    ttft = slots
            if pod.down_until > now:
                ttft += penalty
            stall = (uncached if uncached < chunk else chunk) * b \
                if pod.answering > 0 or m.running > pod.pending_n else 0.0
            d = pod.d if pod.d_seen else a
            weight = compute + evict * occ(address) if occ is not None else compute
            # the smallest tie-break toward the cache even at computeWeight 0: less work for the same wait
            cost = ttft + (weight * pb + 1e-3 * b) * uncached
            cache[address] = Estimate(uncached, work, ttft, d + stall, stall, cost)

    # ------------------------------------------------------------------ request path

    def record(self, state, request, endpoint, decode=None) -> None:
        """The request's prefill goes to `endpoint` (and, with P/D, its decode to `decode`): count its
        work there until its first token."""
        est = self.estimates(state, request, [endpoint])[0]
        stale = self._inflight.get(id(request))
        if stale is not None:     # a request that never completed and whose id was reused: let it go
            old = self.pods.get(stale.prefill)
            if old is not None and not stale.first:
                self._release(old, stale)
            gone = self.pods.get(stale.decode)
            if gone is not None:
                gone.decoding = max(0, gone.decoding - 1)
        pod = self._pod(endpoint.address)
        pod.pending_tokens += est.uncached
        pod.pending_n += 1
        self._pod((decode or endpoint).address).decoding += 1
        self.mean_uncached += 0.05 * (est.uncached - self.mean_uncached)
        self._inflight[id(request)] = _InFlight(endpoint.address, (decode or endpoint).address, est)

    def pre_request(self, state, request, result: SchedulingResult):
        if not result.targets:
            return None
        prefill = result.prefill_target()
        if prefill is not None:
            self.record(state, request, prefill, result.targets[0])
        else:
            self.record(state, request, result.targets[0])
        return None

    def response_first_chunk(self, request, result, elapsed: float) -> None:
        entry = self._inflight.get(id(request))
        if entry is None or entry.first:
            return
        entry.first = self.clock()
        pod = self.pods.get(entry.prefill)
        if pod is not None:
            self._release(pod, entry)
            pod.started.append(entry.first)
            warm = pod.sw >= self.warmup
            pod.observe(entry.work, elapsed, self.forget)
            # the pool's mean fit moves slowly: refreshed when a pod joins it and every 16th observation
            self._observations += 1
            if (not warm and pod.sw >= self.warmup) or self._observations % 16 == 0:
                self._pool_dirty = True
            pod.track(entry.predicted, elapsed)
        dec = self.pods.get(entry.decode)
        if dec is not None:
            dec.answering += 1

    def response_complete(self, request, result, status, usage=None) -> None:
        entry = self._inflight.pop(id(request), None)
        if entry is None:
            return
        if not entry.first:
            pod = self.pods.get(entry.prefill)
            if pod is not None:
                self._release(pod, entry)
        dec = self.pods.get(entry.decode)
        if dec is None:
            return
        dec.decoding = max(0, dec.decoding - 1)
        if entry.first:
            dec.answering -= 1
            n = usage.completion_tokens if usage is not None and usage.seen else 0
            if n > 0:
                self.mean_output += 0.05 * (n - self.mean_output) if self.mean_output else n
            if n > 1 and (status is None or status < 400):
                per_token = (self.clock() - entry.first) / (n - 1)
                dec.d = per_token if not dec.d_seen else dec.d + 0.1 * (per_token - dec.d)
                dec.d_seen = True
        if status is not None and status >= 500 and self.failure_penalty > 0:
            dec.failures += 1
            dec.down_until = self.clock() + self.failure_penalty

    @staticmethod
    def _release(pod: _Pod, entry: "_InFlight") -> None:
        pod.pending_tokens = max(0.0, pod.pending_tokens - entry.uncached)
        pod.pending_n = max(0, pod.pending_n - 1)

    def decoding(self, address: str) -> int:
        """Requests whose answer the endpoint streams (its decodes, P/D or not), by the EPP's own count."""
        pod = self.pods.get(address)
        return pod.decoding if pod is not None else 0

    def endpoints_removed(self, addresses: list[str]) -> None:
        for a in addresses:
            self.pods.pop(a, None)
        self._pool_dirty = True


class _Collector(LiveCollector):
    """Predicted and observed TTFT per endpoint (and the learned fit), read at scrape time: no per-request
    metric updates on the hot path."""

    def collect(self):
        labels = ["plugin_name", "endpoint"]
        pred = GaugeMetricFamily("epp_ttft_predicted_seconds", "Predicted TTFT of the requests sent to the "
                                 "endpoint (EWMA over its observed requests).", labels=labels)
        obs = GaugeMetricFamily("epp_ttft_observed_seconds", "Observed TTFT (first chunk of the streamed answer "
                                "after the pick, EWMA) per endpoint.", labels=labels)
        err = GaugeMetricFamily("epp_ttft_prediction_abs_error_seconds", "|predicted - observed| TTFT per "
                                "endpoint (EWMA).", labels=labels)
        thr = GaugeMetricFamily("epp_prefill_tokens_per_second", "Prefill throughput the model learned per "
                                "endpoint (1 / b).", labels=labels)
        fixed = GaugeMetricFamily("epp_ttft_fixed_seconds", "Fixed part of the TTFT the model learned per "
                                  "endpoint (a).", labels=labels)
        pending = GaugeMetricFamily("epp_prefill_pending_tokens", "Uncached prompt tokens sent to the endpoint "
                                    "whose first token has not come yet.", labels=labels)
        count = CounterMetricFamily("epp_ttft_observations", "TTFT observations per endpoint.", labels=labels)
        for m in list(self.live):
            for addr, p in list(m.pods.items()):
                lv = [m.name, addr]
                if p.observations:
                    pred.add_metric(lv, p.pred_ewma)
                    obs.add_metric(lv, p.obs_ewma)
                    err.add_metric(lv, p.err_ewma)
                a, b = m.fit(p)
                thr.add_metric(lv, 1.0 / b if b > 0 else 0.0)
                fixed.add_metric(lv, a)
                pending.add_metric(lv, p.pending_tokens)
                count.add_metric(lv, p.observations)
        return [pred, obs, err, thr, fixed, pending, count]
