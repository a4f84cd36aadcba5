"""The discrete-event simulation: vllm_sim engines and epp's scheduler on one virtual clock.

Every effect of the wall-clock stack is an event at its engine time:
- a client sends a request; halfway through the router path epp schedules it (the real Scheduler from
  the config file, with epp's in-flight accounting); the request reaches its pod after the rest of it;
- each pod's engine steps as the sim server drives it: a step runs at once when an idle engine gets
  work, the next one when the previous step's modelled time is over; outputs are delivered then;
- epp scrapes each pod's metrics every scrape interval (each pod at its own phase) and only sees that
  snapshot; candidates whose snapshot is older than the staleness threshold drop out as in the director;
- KV-event batches leave at the start of the step that caused them, encoded in vLLM's wire format, and
  reach the precise index after the ZMQ delay (decoded by epp's own decoder);
- P/D: the decode pod's sidecar sends the prefill leg (max_tokens 1, remote decode) to the prefill pod,
  waits for its answer, then sends the decode leg with the prefill's kv_transfer_params; the decode
  engine pulls the KV (the bytes are copied and checked as the sim's connector does), releases the
  prefill pod's pinned blocks, and starts decoding after the modelled transfer time;
- answers reach the client one return path later; a stage's drain timeout cuts what is left.
"""
from __future__ import annotations

import heapq
import itertools
import math
import random

import msgpack

from epp.datalayer.kv_events import decode_batch
from epp.headers import PREFILLER
from epp.requestcontrol.errors import EPPError
from epp.requestcontrol.parse import parse_body
from epp.requestcontrol.usage import Usage
from epp.scheduling.config import default_saturation_detector, load as load_config
from epp.scheduling.scheduler import from_config
from epp.scheduling.types import LLMRequest
from vllm_sim.engine import Request
from vllm_sim.kv_events import encode_event

from .load import Load
from .pods import Pod, PodSpec, Prompts
from .stack import Stack
from .vtime import VirtualClock

def _seed_plugins(plugins, rng: random.Random) -> None:
    """Plugins that break ties or sample at random (pickers, filters) each keep a random.Random seeded
    from the OS; the config loader offers no seed, so the generators they hold (as an attribute or
    behind a bound method) are reseeded from the run's seed: same inputs, same picks."""
    for p in sorted(plugins, key=lambda p: (p.type_name, p.name)):
        for attr in sorted(vars(p)):
            v = getattr(p, attr)
            gen = v if isinstance(v, random.Random) else getattr(v, "__self__", None)
            if isinstance(gen, random.Random):
                gen.seed(rng.getrandbits(64))


class Flight:
    """One client request on its way through the stack."""

    __slots__ = ("i", "stage", "item", "t_send", "request", "result", "tokens", "pod", "prefill", "prefill_open",
                 "rid", "pre_rid", "eng", "pre_eng", "status", "error", "t_first", "t_done", "itl", "out_tokens",
                 "prompt_tokens", "cached_tokens", "open", "reported_cached", "first_told")

    def __init__(self, i: int, stage: "StageRun", item, t: float) -> None:
        self.i, self.stage, self.item, self.t_send = i, stage, item, t
        self.request = self.result = self.pod = self.prefill = self.eng = self.pre_eng = None
        self.prefill_open = False
        self.rid = self.pre_rid = ""
        self.status, self.error = 0, ""
        self.t_first = self.t_done = math.nan
        self.itl: list[float] = []
        self.out_tokens = self.prompt_tokens = self.cached_tokens = self.tokens = 0
        self.open = True           # counted in flight by epp, not yet done
        self.reported_cached = None
        self.first_told = False    # the first-chunk hook has run


class StageRun:
    __slots__ = ("index", "plan", "t_start", "t_arrivals_end", "t_end", "flights", "outstanding", "arrivals_done",
                 "counters0", "counters1", "rng", "t_next", "ended", "drain_seq", "drained", "sessions")

    def __init__(self, index: int, plan) -> None:
        self.index, self.plan = index, plan
        self.t_start = self.t_arrivals_end = self.t_end = 0.0
        self.flights: list[Flight] = []
        self.outstanding = 0
        self.arrivals_done = self.ended = False
        self.drained = True
        self.counters0 = self.counters1 = None
        self.rng = random.Random(plan.seed)
        self.t_next = 0.0
        self.drain_seq = 0
        self.sessions = 0          # agentic sessions started and not over (a turn in flight or thinking)


class Simulation:
    def __init__(self, pods: list[PodSpec], config_text: str, load: Load, stack: Stack | None = None,
                 seed: int = 0, config_source: str = "config", prompts: Prompts | None = None) -> None:
        self.stack = stack or Stack()
        self.load = load
        self.prompts = prompts or Prompts()
        self.clock = VirtualClock()
        self.pods = [Pod(i, spec, self.prompts.vocab_ids) for i, spec in enumerate(pods)]
        self.by_address = {p.address: p for p in self.pods}
        cfg = load_config(config_text, config_source)
        self.scheduler = from_config(cfg)
        self.saturation = cfg.saturation or default_saturation_detector(self.stack.staleness_s)
        # plugins that consume KV events (the precise producer): epp.datalayer.kv_events.KVEventSink
        self.sinks = [p for p in self.scheduler.plugins
                      if callable(getattr(p, "apply", None)) and callable(getattr(p, "reset", None))]
        self.rng = random.Random(seed)
        _seed_plugins(self.scheduler.plugins, self.rng)
        self.heap: list = []
        self.seq = itertools.count()
        self.ids = itertools.count(1)
        self.flights_by_rid: dict[str, tuple[Flight, bool]] = {}   # engine request id -> (flight, is prefill leg)
        self.stages: list[StageRun] = []
        self.pull_ok: dict[str, bool] = {}
        self.pulls = {"ok": 0, "failed": 0}
        self.finished = False
        self.steps = 0
        self.events = 0
        s = self.stack
        self.d_in = s.engine(s.router_ms) / 2      # client -> Envoy -> epp, and epp -> Envoy -> pod
        self.d_ret = s.engine(s.return_ms)
        self.d_hop = s.engine(s.hop_ms)
        self.d_kv = s.engine(s.kv_event_ms)

    # ------------------------------------------------------------------ the event loop

    def at(self, t: float, fn, arg=None) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), fn, arg))

    def run(self) -> "Simulation":
        clock = self.clock
        with clock.installed():
            for pod in self.pods:
                pod.scrape(clock.monotonic())
                self.at(self.rng.uniform(0, self.stack.scrape_interval_s), self._scrape, pod)
            self._start_stage(0)
            heap, pop = self.heap, heapq.heappop
            n = 0
            while heap and not self.finished:
                t, _, fn, arg = pop(heap)
                clock.now = t
                fn(arg)
                n += 1
            self.events = n
        return self

    @property
    def now(self) -> float:
        return self.clock.now

    # ------------------------------------------------------------------ stages and clients

    def _start_stage(self, k: int) -> None:
        if k >= len(self.load.stages):
            self.finished = True
            return
        st = StageRun(k, self.load.stages[k])
        self.stages.append(st)
        st.t_start = st.t_next = self.now
        st.counters0 = self._counters()
        mode = st.plan.mode
        if mode in ("poisson", "sessions"):
            self._next_arrival(st)
        elif mode == "concurrency":
            for _ in range(int(st.plan.level)):
                self._send(st, self.load.next_item())
            self.at(st.t_start + st.plan.duration_s, self._arrivals_over, st)
        else:
            for off, item in st.plan.trace:
                self.at(st.t_start + off, self._trace_send, (st, item))
            last = st.plan.trace[-1][0] if st.plan.trace else 0.0
            self.at(st.t_start + last, self._arrivals_over, st)

    def _next_arrival(self, st: StageRun) -> None:
        """The harness's open loop: the next send (with sessions, the next session's first turn; the rest
        follow as answers come, hack/bench/agentic.py) is an exponential gap after the previous planned one."""
        p = st.plan
        st.t_next += st.rng.expovariate(p.level)
        if st.t_next >= st.t_start + p.duration_s or (p.max_requests and len(st.flights) >= p.max_requests):
            self._arrivals_over(st)
            return
        self.at(st.t_next, self._session_start if p.mode == "sessions" else self._poisson_send, st)

    def _poisson_send(self, st: StageRun) -> None:
        self._send(st, self.load.next_item())
        self._next_arrival(st)

    def _session_start(self, st: StageRun) -> None:
        st.sessions += 1
        s = self.load.source.new_session()
        self._send(st, self.load.source.turn(s, 0))
        self._next_arrival(st)

    def _next_turn(self, arg) -> None:
        st, session, k = arg
        if not st.ended:
            self._send(st, self.load.source.turn(session, k))

    def _trace_send(self, arg) -> None:
        st, item = arg
        self._send(st, item)

    def _arrivals_over(self, st: StageRun) -> None:
        if st.arrivals_done:
            return
        st.arrivals_done = True
        st.t_arrivals_end = self.now
        self.at(self.now + st.plan.drain_timeout_s, self._drain_timeout, st)
        self._maybe_end(st)

    def _maybe_end(self, st: StageRun) -> None:
        if st.arrivals_done and st.outstanding == 0 and st.sessions == 0 and not st.ended:
            self._end_stage(st)

    def _end_stage(self, st: StageRun) -> None:
        st.ended = True
        st.t_end = self.now
        st.counters1 = self._counters()
        self._start_stage(st.index + 1)

    def _drain_timeout(self, st: StageRun) -> None:
        if st.ended:
            return
        st.drained = False
        for f in st.flights:
            if f.open and f.status == 0:
                self._cut(f)
        st.outstanding = st.sessions = 0
        self._end_stage(st)

    def _send(self, st: StageRun, item) -> None:
        f = Flight(len(st.flights), st, item, self.now)
        st.flights.append(f)
        st.outstanding += 1
        self.at(self.now + self.d_in, self._route, f)

    # ------------------------------------------------------------------ epp

    def _route(self, f: Flight) -> None:
        """What the director does for one request: parse, candidates, shed or schedule, count in flight."""
        api = self.load.api
        body, model, prompt, stream, salt = parse_body(api, f.item.body)
        priority = getattr(f.item, "priority", 0)
        headers = dict(getattr(f.item, "headers", None) or {})     # agentic turns carry x-session-id
        req = LLMRequest(request_id=f"plan-{next(self.ids)}", model=model, target_model=model, api=api,
                         prompt=prompt, headers=headers, body=body, priority=priority, cache_salt=salt, stream=stream)
        f.request = req
        candidates = self._candidates()
        if priority < 0 and self.saturation.saturation(candidates) >= 1.0:
            return self._reject(f, 429, "sheddable request shed")
        try:
            result, _ = self.scheduler.schedule(req, candidates)
        except EPPError as e:
            return self._reject(f, e.status, str(e))
        if not result.targets:
            return self._reject(f, 429, "no endpoint passed the filters")
        f.result = result
        f.tokens = tokens = (len(prompt) + 3) // 4      # the director's estimate, counted in flight
        ep = result.targets[0]
        ep.in_flight += 1
        ep.in_flight_tokens += tokens
        pre = result.prefill_target()
        if pre is not None:
            pre.in_flight += 1
            pre.in_flight_tokens += tokens
            f.prefill_open = True
        f.pod = self.by_address[ep.address]
        target = next((v for k, v in (result.headers or ()) if k == PREFILLER), None)
        if target:
            # the decode pod's sidecar takes the first host named and sends it the prefill leg
            f.prefill = self.by_address[target.split(",")[0].strip()]
            self.at(self.now + self.d_in + self.d_hop, self._prefill_arrives, f)
        else:
            self.at(self.now + self.d_in, self._decode_arrives, (f, None))

    def _candidates(self) -> list:
        eps = [p.endpoint for p in self.pods if p.endpoint.ready]
        oldest = self.clock.monotonic() - self.stack.staleness_s
        fresh = [ep for ep in eps if ep.metrics.updated >= oldest and ep.metrics.updated > 0.0]
        return fresh or eps

    def _reject(self, f: Flight, status: int, why: str) -> None:
        f.status, f.error = status, why
        self.at(self.now + self.d_in, self._closed, f)

    def _response_started(self, f: Flight) -> None:
        """The answer's headers reach Envoy: epp stops counting the prefill pod, response hooks run."""
        self._prefill_done(f)
        if f.result is not None and f.open:
            self.scheduler.response_headers(f.request, f.result, 200)

    def _first_chunk(self, f: Flight) -> None:
        """The answer's first chunk passes epp: the first-chunk hook (the predicted-latency scorer learns
        each pod's prefill speed from these TTFTs)."""
        if f.result is not None and f.open:
            self.scheduler.response_first_chunk(f.request, f.result, self.now - f.t_send)

    def _prefill_done(self, f: Flight) -> None:
        if f.prefill_open:
            f.prefill_open = False
            pre = f.result.prefill_target()
            pre.in_flight -= 1
            pre.in_flight_tokens -= f.tokens

    def _epp_done(self, f: Flight, status: int | None, usage: Usage | None) -> None:
        if not f.open:
            return
        f.open = False
        if f.result is not None:
            ep = f.result.targets[0]
            ep.in_flight -= 1
            ep.in_flight_tokens -= f.tokens
            self._prefill_done(f)
            self.scheduler.response_complete(f.request, f.result, status, usage)

    # ------------------------------------------------------------------ pods

    def _engine_request(self, f: Flight, prefill_leg: bool, kvp: dict | None) -> Request:
        ids, max_tokens, ignore_eos, seed = self.prompts.of(f.item.body, self.load.api == "chat")
        rid = f"r{next(self.ids)}"
        req = Request(request_id=rid, prompt_token_ids=ids, max_tokens=1 if prefill_leg else max_tokens,
                      arrival_time=self.now, ignore_eos=ignore_eos, seed=seed, remote_decode=prefill_leg,
                      remote_prefill=kvp)
        self.flights_by_rid[rid] = (f, prefill_leg)
        return req

    def _prefill_arrives(self, f: Flight) -> None:
        if not f.open:
            return
        req = self._engine_request(f, True, None)
        f.pre_rid, f.pre_eng = req.request_id, req
        f.prefill.engine.add_request(req)
        self._kick(f.prefill)

    def _prefill_answered(self, f: Flight) -> None:
        """The prefill leg's answer is back at the sidecar: the decode leg carries its kv_transfer_params."""
        if not f.open:
            return
        pod = f.prefill
        req = pod.engine.requests.get(f.pre_rid)
        blocks = pod.engine.kv.blocks_of(f.pre_rid)
        kvp = None
        if req is not None and blocks:
            kvp = {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": blocks,
                   "remote_engine_id": pod.name, "remote_request_id": f.pre_rid, "pod": pod.index}
            f.reported_cached = max(0, req.num_cached_tokens)
        self.at(self.now + self.d_hop, self._decode_arrives, (f, kvp))

    def _decode_arrives(self, arg) -> None:
        f, kvp = arg
        if not f.open:
            return
        req = self._engine_request(f, False, kvp)
        f.rid, f.eng = req.request_id, req
        f.pod.engine.add_request(req)
        self._kick(f.pod)
        # the sim answers with headers right away (aiohttp prepares the stream before the first token)
        self.at(self.now + self.d_ret + (self.d_hop if f.prefill else 0.0), self._response_started, f)

    def _kick(self, pod: Pod) -> None:
        """The sim server's wake(): an idle engine loop steps at once."""
        if not pod.busy and not pod.kicked:
            pod.kicked = True
            self.at(self.now, self._step, pod)

    def _step(self, pod: Pod) -> None:
        pod.kicked = False
        if pod.busy:
            return
        t = self.now
        e = pod.engine
        out = e.step(t)
        self.steps += 1
        for req in e.take_pending_loads():
            self._start_pull(pod, req)
        events = e.kv.drain_events()
        if events and self.sinks:
            payload = msgpack.packb([t, [encode_event(ev) for ev in events], 0], use_bin_type=True)
            self.at(t + self.d_kv, self._deliver_events, (pod, payload))
        if out is None:
            wake = e.next_wakeup()
            if wake is not None:
                pod.wake_seq += 1
                self.at(max(wake, t), self._wake, (pod, pod.wake_seq))
            return
        pod.busy = True
        self.at(out.end, self._step_end, (pod, out))

    def _wake(self, arg) -> None:
        pod, seq = arg
        if seq == pod.wake_seq and not pod.busy:
            self._step(pod)

    def _step_end(self, arg) -> None:
        pod, out = arg
        pod.busy = False
        first_hook = self.scheduler.wants_first_chunk
        for o in out.outputs:
            if first_hook and o.request.output_token_ids:
                got = self.flights_by_rid.get(o.request.request_id)
                if got is not None and not got[1] and not got[0].first_told:
                    f = got[0]   # its first token: the chunk reaches epp after the way back
                    f.first_told = True
                    self.at(self.now + self.d_ret + (self.d_hop if f.prefill else 0.0), self._first_chunk, f)
            if o.finished:
                got = self.flights_by_rid.pop(o.request.request_id, None)
                if got is None:
                    continue
                f, prefill_leg = got
                if prefill_leg:
                    self.at(self.now + self.d_hop, self._prefill_answered, f)
                else:
                    self.at(self.now + self.d_ret + (self.d_hop if f.prefill else 0.0), self._answered, f)
        self._step(pod)

    def _deliver_events(self, arg) -> None:
        pod, payload = arg
        batch = decode_batch(payload)
        for sink in self.sinks:
            sink.apply(pod.address, self.load.model, batch)

    def _scrape(self, pod: Pod) -> None:
        if self.finished:
            return
        pod.scrape(self.clock.monotonic())
        self.at(self.now + self.stack.scrape_interval_s, self._scrape, pod)

    # ------------------------------------------------------------------ P/D KV pull (the sim's connector)

    def _start_pull(self, pod: Pod, req: Request) -> None:
        p = req.remote_prefill or {}
        src = self.pods[p["pod"]]
        bs = pod.engine.cfg.block_size
        hit = req.num_computed_tokens - req.load_tokens
        first, last = hit // bs, -(-req.num_computed_tokens // bs)
        remote = list(p.get("remote_block_ids") or [])[first:last]
        local = pod.engine.kv.blocks_of(req.request_id)[first:last]
        t = self.now
        self.at(t + self.d_hop, self._pull_read, (pod, src, req, remote, local))
        self.at(t + 2 * self.d_hop, self._pull_release, (src, p.get("remote_request_id")))
        done = t + max(pod.profile.transfer_time(req.load_tokens), 2 * self.d_hop)
        self.at(done, self._pull_done, (pod, req))

    def _pull_read(self, arg) -> None:
        pod, src, req, remote, local = arg
        e, se = pod.engine, src.engine
        ok = len(remote) == len(local) and req.request_id in e.requests
        if ok and local:
            bb = e.block_bytes()
            for r, b in zip(remote, local):
                e.kv_data[b * bb:(b + 1) * bb] = se.kv_data[r * bb:(r + 1) * bb]
            ok = e.verify_blocks(req, req.num_computed_tokens)
        self.pull_ok[req.request_id] = ok

    def _pull_release(self, arg) -> None:
        src, rid = arg
        if src.engine.release_pinned(rid):
            self._kick(src)

    def _pull_done(self, arg) -> None:
        pod, req = arg
        ok = self.pull_ok.pop(req.request_id, False)
        self.pulls["ok" if ok else "failed"] += 1
        pod.engine.finish_remote_load(req.request_id, ok, self.now)
        self._kick(pod)

    # ------------------------------------------------------------------ answers

    def _answered(self, f: Flight) -> None:
        """The last chunk reached the client."""
        if not f.open:
            return
        r = f.eng
        ret = self.d_ret + (self.d_hop if f.prefill else 0.0)
        f.status = 200
        f.t_first = r.first_token_time + ret
        f.t_done = self.now
        tt = r.token_times
        f.itl = [b - a for a, b in zip(tt, tt[1:])]
        f.out_tokens = len(r.output_token_ids)
        f.prompt_tokens = r.num_prompt_tokens
        f.cached_tokens = f.reported_cached if f.reported_cached is not None else max(0, r.num_cached_tokens)
        if f.stage.plan.mode == "sessions":
            self.load.source.answered(f.item.session, self.prompts.text(r.output_token_ids))
        elif self.load.wants_text():
            self.load.done(f.item, self.prompts.text(r.output_token_ids))
        self._epp_done(f, 200, Usage(f.prompt_tokens, f.out_tokens, f.cached_tokens, True))
        self._finish_flight(f)

    def _closed(self, f: Flight) -> None:
        """A request epp refused: the client has its error."""
        f.t_done = self.now
        self._finish_flight(f)

    def _cut(self, f: Flight) -> None:
        """The client gave up (drain timeout): the sims abort what they still hold, epp counts it done."""
        f.error = f.error or "not finished at drain timeout"
        for pod, rid in ((f.pod, f.rid), (f.prefill, f.pre_rid)):
            if pod is not None and rid and rid in pod.engine.requests:
                pod.engine.abort_request(rid)
                self.flights_by_rid.pop(rid, None)
                self._kick(pod)
        self._epp_done(f, None, None)

    def _finish_flight(self, f: Flight) -> None:
        st = f.stage
        if st.ended:
            return
        st.outstanding -= 1
        if st.plan.mode == "concurrency" and not st.arrivals_done:
            self._send(st, self.load.next_item())
        elif st.plan.mode == "sessions":
            k = f.item.turn + 1
            if f.status == 200 and k < st.plan.turns:
                self.at(self.now + st.plan.think_s, self._next_turn, (st, f.item.session, k))
            else:
                st.sessions -= 1       # done, or an agent whose call failed gives up the task
        self._maybe_end(st)

    # ------------------------------------------------------------------ counters

    def _counters(self) -> list[dict]:
        out = []
        for p in self.pods:
            e = p.engine
            out.append({"hits": e.kv.hits, "queries": e.kv.queries, "preemptions": e.num_preemptions_total,
                        "generation_tokens": e.generation_tokens_total, "steps": e.step_count})
        return out
