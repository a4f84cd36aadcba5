#!/usr/bin/env python3
"""A scenario's pool and epp's request control in one process, on a virtual clock: vllm_sim's engines
(no sockets, no time scale) and epp's Director with a config file, for tuning routing quickly and
without the noise of a shared machine. Not a benchmark of record (no Envoy, no network, no peers, no
router overhead): the harness (hack/bench.sh) is.

    .venv/bin/python -m hack.routing_sim heterogeneous --config config/predicted-latency.yaml [--config ...]

Supports the scenario's pool (profiles cycled, blocks, batch limits), shared_prefix / random / long_input
workloads, Poisson or bursty arrivals at each stage's rate, router replicas (requests alternate between
N directors), restart / reset_prefix_cache events and the side client. Prints per config and stage:
TTFT p50/p90, output tok/s, the pods' prefix hit rate and the share of requests per pod.
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import os
import random
import types

import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from epp.datalayer.endpoint import Endpoint, Metrics
from epp.datalayer.store import EndpointStore
from epp.requestcontrol import director as director_mod
from epp.requestcontrol.director import Director
from epp.scheduling.config import load
from epp.scheduling.plugins._latency_model import LatencyModel
from epp.scheduling.scheduler import from_config
from hack.bench.arrivals import Arrivals
from testbed import scenario as scen
from testbed.workload import Workload
from vllm_sim import profiles, tokenizer
from vllm_sim.engine import Engine, EngineConfig, Request

SCRAPE = 0.05
CHUNK = b'data: {"choices":[{"text":"x"}]}\n\n'


class Clock:
    t = 1.0

    def __call__(self) -> float:
        return self.t


class Pod:
    def __init__(self, i: int, s, tok) -> None:
        p = s.pool
        self.profile = profiles.get(p.profiles[i % len(p.profiles)] if p.profiles else p.profile)
        self.cfg = EngineConfig(num_gpu_blocks=p.gpu_blocks or self.profile.num_gpu_blocks, block_size=p.block_size,
                                max_num_seqs=p.max_num_seqs, max_num_batched_tokens=p.max_num_batched_tokens,
                                offload_blocks=p.offload_blocks, vocab_ids=tok.word_token_ids())
        self.engine = Engine(self.cfg, self.profile)
        self.busy_until = None          # end of the step in flight
        self.epoch = 0
        roles = [r.strip() for r in p.roles.split(",")]
        self.ep = Endpoint(name=f"pod-{i}", address=f"10.0.0.{i + 1}:8000",
                           labels={"llm-d.ai/role": roles[i % len(roles)]})
        self.requests: dict[str, tuple] = {}   # request id -> (decision, director, first seen)

    def restart(self) -> None:
        self.engine = Engine(self.cfg, self.profile)
        self.busy_until = None
        self.epoch += 1


SGLANG_LIKE = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: sim-sglang-like-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: sim-sglang-like-picker
"""


def _register_sglang_like() -> None:
    """An in-process stand-in for sglang-router's cache_aware policy (its documented defaults: cache
    threshold 0.3, balance thresholds 64 requests and 1.5x), on epp's approximate prefix index: a
    reference point for tuning, not the peer itself."""
    from epp.scheduling.framework import (
        REGISTRY,
        BindsPlugins,
        Picker,
        PrefixMatchConsumer,
    )
    from epp.scheduling.plugins.approx_prefix_cache_producer import (
        ApproxPrefixCacheProducer,
    )
    if "sim-sglang-like-picker" in REGISTRY:
        return

    class SglangLike(Picker, BindsPlugins, PrefixMatchConsumer):
        type_name = "sim-sglang-like-picker"

        def __init__(self, name=None):
            super().__init__(name)
            self.producer = ApproxPrefixCacheProducer(name="sglang-like/producer")

        def bind(self, plugins):
            pass

        def sub_plugins(self):
            return [self.producer]

        def pick(self, state, request, endpoints, scores):
            loads = [ep.in_flight for ep in endpoints]
            hi, lo = max(loads), min(loads)
            if hi - lo > 64 and hi > 1.5 * lo:
                return [endpoints[loads.index(lo)]]
            info = self.producer.match_info(state, request)
            ratios = [info.matched.get(ep.address, 0) / info.total if info.total else 0 for ep in endpoints]
            best = max(range(len(endpoints)), key=lambda i: (ratios[i], -loads[i]))
            if ratios[best] > 0.3:
                return [endpoints[best]]
            lrus = self.producer.index._lru
            sizes = [len(lrus[ep.address]) if ep.address in lrus else 0 for ep in endpoints]
            return [endpoints[sizes.index(min(sizes))]]

    from epp.scheduling.framework import HasSubPlugins
    SglangLike.__bases__ = SglangLike.__bases__ + (HasSubPlugins,)
    REGISTRY["sim-sglang-like-picker"] = SglangLike


def run(s, config_text: str, stages: list[float], seed: int = 1) -> list[dict]:
    clock = Clock()
    director_mod.time = types.SimpleNamespace(perf_counter=clock)
    tok = tokenizer.load()
    pods = [Pod(i, s, tok) for i in range(s.pool.count)]
    dirs = []
    for _ in range(max(1, s.router_replicas)):
        store = EndpointStore()
        # replicas see the same pods (their own Endpoint objects: in-flight counts are per replica)
        eps = [Endpoint(name=p.ep.name, address=p.ep.address, labels=dict(p.ep.labels)) for p in pods]
        store.replace(eps)
        sched = from_config(load(config_text))
        for pl in sched.plugins:
            if isinstance(pl, LatencyModel):
                pl.clock = clock
        dirs.append((Director(store, sched, staleness=1e9), {e.address: e for e in eps}))
    ids = itertools.count()
    token_cache: dict[bytes, list[int]] = {}
    wl = Workload(s)
    path = "/v1/chat/completions" if s.workload.api == "chat" else "/v1/completions"
    results = []
    events: list = []      # (time, seq, kind, payload)
    seq = itertools.count()

    def push(t, kind, payload=None):
        heapq.heappush(events, (t, next(seq), kind, payload))

    def tokens_of(body: bytes) -> tuple[list[int], int]:
        got = token_cache.get(body)
        if got is None:
            doc = orjson.loads(body)
            text = doc["prompt"] if "prompt" in doc else tok.apply_chat_template(doc["messages"], True)
            got = token_cache[body] = (tok.encode(text), doc["max_tokens"])
            if len(token_cache) > 4096:
                token_cache.clear()
        return got

    def kick(pod: Pod) -> None:
        if pod.busy_until is not None:
            return
        out = pod.engine.step(clock.t)
        for pulled in pod.engine.take_pending_loads():     # P/D: the decode side pulls the KV over the network
            push(clock.t + pod.profile.transfer_time(pulled.load_tokens), "loaded", (pod, pod.epoch, pulled.request_id))
        if out is None:
            return
        pod.busy_until = out.end
        push(out.end, "step", (pod, pod.epoch, out))

    def scrape() -> None:
        for pod in pods:
            e = pod.engine
            m = Metrics(waiting=len(e.waiting), running=len(e.running), kv_usage=e.kv_usage(),
                        num_gpu_blocks=pod.cfg.num_gpu_blocks, block_size=pod.cfg.block_size, updated=clock.t)
            for _, by_addr in dirs:
                by_addr[pod.ep.address].metrics = m

    rr = itertools.count()
    for si, rate in enumerate(stages):
        recs = []
        side = s.side_client if s.side_client and (si + 1) in (s.side_client.get("stages") or []) else None
        t0 = clock.t
        arr = Arrivals(random.Random(seed + si), rate, t0, s.load.on_s, s.load.off_s)
        t = arr.next()
        while t < t0 + s.load.duration_s:
            push(t, "arrive")
            t = arr.next()
        if side:
            srng = random.Random(1000 + si)
            t = t0
            while (t := t + srng.expovariate(side["rate"])) < t0 + s.load.duration_s:
                push(t, "side", srng.choice(side["pods"]))
        for ev in s.events or []:
            if ev["stage"] == si + 1:
                push(t0 + ev["at_s"], ev["action"], ev["pod"])
        push(clock.t, "scrape")
        hits0 = [(p.engine.kv.hits, p.engine.kv.queries) for p in pods]
        end_arrivals = t0 + s.load.duration_s
        while events:
            t, _, kind, payload = heapq.heappop(events)
            clock.t = t
            if kind == "scrape":
                scrape()
                if t < end_arrivals or any(p.requests for p in pods):
                    push(t + SCRAPE, "scrape")
                continue
            if kind == "arrive":
                body = wl.next().body
                d, by_addr = dirs[next(rr) % len(dirs)]
                dec = d.decide({}, path, body, None)
                dec.started = t
                pod = next(p for p in pods if p.ep.address == dec.targets[0].address)
                ids_, max_tokens = tokens_of(body)
                rid = f"r{next(ids)}"
                rec = {"t": t, "ttft": None, "out": 0, "pod": pod.ep.address, "prompt": len(ids_), "cached": 0}
                recs.append(rec)
                pre = dec.result.prefill_target() if dec.result is not None else None
                if pre is not None:        # P/D: the sidecar's prefill leg first, then the decode with a KV pull
                    ppod = next(p for p in pods if p.ep.address == pre.address)
                    rec["disagg"] = True
                    ppod.engine.add_request(Request("p" + rid, ids_, 1, t, remote_decode=True))
                    ppod.requests["p" + rid] = (dec, d, rec, ("leg", pod, rid, ids_, max_tokens))
                    kick(ppod)
                    continue
                pod.engine.add_request(Request(rid, ids_, max_tokens, t))
                pod.requests[rid] = (dec, d, rec)
                kick(pod)
                continue
            if kind == "side":
                pod = pods[payload]
                body = rng_side_body(wl, t)
                ids_, max_tokens = tokens_of(body)
                pod.engine.add_request(Request(f"s{next(ids)}", ids_, max_tokens, t))
                kick(pod)
                continue
            if kind in ("restart", "reset_prefix_cache"):
                pod = pods[payload]
                if kind == "reset_prefix_cache":
                    pod.engine.kv.reset()
                else:
                    for rid, (dec, d, rec) in list(pod.requests.items()):
                        rec["error"] = True
                        if dec.usage is None:
                            d.response_started(dec, 503, False)
                        d.done(dec, 503)
                    pod.requests.clear()
                    pod.restart()
                continue
            if kind == "loaded":
                pod, epoch, rid = payload
                if epoch == pod.epoch:
                    pod.engine.finish_remote_load(rid, True, t)
                    kick(pod)
                continue
            pod, epoch, out = payload
            if epoch != pod.epoch:
                continue
            pod.busy_until = None
            for o in out.outputs:
                entry = pod.requests.get(o.request.request_id)
                if entry is None:
                    continue
                if len(entry) == 4:             # a prefill leg finished: release its blocks, start the decode
                    if o.finished:
                        dec, d, rec, (_, dpod, rid, ids_, max_tokens) = entry
                        del pod.requests[o.request.request_id]
                        pod.engine.release_pinned(o.request.request_id)
                        dpod.engine.add_request(Request(rid, ids_, max_tokens, t,
                                                        remote_prefill={"remote_block_ids": [0]}))
                        dpod.requests[rid] = (dec, d, rec)
                        kick(dpod)
                    continue
                dec, d, rec = entry
                if rec["ttft"] is None and o.new_token_ids:
                    rec["ttft"] = t - rec["t"]
                    rec["cached"] = max(0, o.request.num_cached_tokens)
                    d.response_started(dec, 200, True)
                    dec.usage.feed(CHUNK)
                if o.new_token_ids:
                    if "last" in rec:
                        rec.setdefault("itl", []).append(t - rec["last"])
                    rec["last"] = t
                rec["out"] += len(o.new_token_ids)
                if o.finished:
                    rec["end"] = t
                    dec.usage.feed(b'data: {"usage":{"prompt_tokens":%d,"completion_tokens":%d}}\n\n'
                                   % (rec["prompt"], rec["out"]))
                    d.done(dec, 200)
                    del pod.requests[o.request.request_id]
            kick(pod)
        span = max(clock.t - t0, 1e-9)
        ok = [r for r in recs if r["ttft"] is not None and not r.get("error")]
        ttft = sorted(r["ttft"] for r in ok)
        q = sum(p.engine.kv.queries - h[1] for p, h in zip(pods, hits0))
        hit = sum(p.engine.kv.hits - h[0] for p, h in zip(pods, hits0)) / q if q else float("nan")
        per_pod = [sum(1 for r in recs if r["pod"] == p.ep.address) for p in pods]
        fits = []
        for pl in dirs[0][0].scheduler.plugins:
            if isinstance(pl, LatencyModel):
                for p in pods:
                    pod = pl.pods.get(p.ep.address)
                    if pod is not None:
                        a_, b_ = pl.fit(pod)
                        fits.append(f"{a_ * 1e3:.0f}ms+{b_ * 1e6:.0f}us")
        itl = sorted(x for r in ok for x in r.get("itl", []))
        e2e = sorted(r["end"] - r["t"] for r in ok if "end" in r)
        results.append({"itl_p90": itl[int(len(itl) * 0.9)] if itl else float("nan"),
                        "e2e_p90": e2e[int(len(e2e) * 0.9)] if e2e else float("nan"),
                        "disagg": sum(1 for r in recs if r.get("disagg")) / max(1, len(recs)),
                        "fits": " ".join(fits), "rate": rate, "n": len(recs), "errors": len(recs) - len(ok),
                        "ttft_p50": ttft[len(ttft) // 2] if ttft else float("nan"),
                        "ttft_p90": ttft[int(len(ttft) * 0.9)] if ttft else float("nan"),
                        "tok_s": sum(r["out"] for r in ok) / span, "hit": hit, "pods": per_pod})
    return results


def median_runs(s, text: str, rates: list[float], seed: int, n: int) -> list[dict]:
    import statistics
    runs = [run(s, text, rates, seed + 100 * k) for k in range(n)]
    if n == 1:
        return runs[0]
    out = []
    for stage in zip(*runs):
        m = dict(stage[0])
        for k in ("ttft_p50", "ttft_p90", "tok_s", "hit", "errors", "itl_p90", "e2e_p90", "disagg"):
            m[k] = statistics.median(x[k] for x in stage)
        m["pods"] = [round(statistics.mean(x["pods"][i] for x in stage)) for i in range(len(stage[0]["pods"]))]
        m["fits"] = f"(median of {n})"
        out.append(m)
    return out


_side_rng = random.Random(99)


def rng_side_body(wl, t) -> bytes:
    bodies = getattr(wl, "bodies", None)
    return _side_rng.choice(bodies) if bodies else wl.next().body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario")
    ap.add_argument("--config", action="append", required=True, help="a config file (repeat to compare)")
    ap.add_argument("--set", action="append", default=[], help="TYPE.PARAM=VALUE: a plugin parameter for every "
                                                              "config (YAML value), e.g. epp-predicted-latency-scorer.computeWeight=3")
    ap.add_argument("--rates", default="", help="comma list overriding the scenario's")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=1, help="runs with arrival seeds seed.. seed+N-1: their medians")
    a = ap.parse_args()
    path = a.scenario if os.path.exists(a.scenario) else os.path.join(ROOT, "hack", "bench", "scenarios", a.scenario + ".yaml")
    s = scen.load(path)
    rates = [float(x) for x in a.rates.split(",")] if a.rates else scen.stages(s)
    import yaml

    from vllm_sim.tokenizer import DEFAULT_DIR
    for c in a.config:
        if c == "sglang-like":
            _register_sglang_like()
            for r in run(s, SGLANG_LIKE, rates, a.seed):
                print(f"{'sglang-like':34s} {r['rate']:6g}: TTFT p50 {r['ttft_p50'] * 1e3:7.1f} ms  p90 "
                      f"{r['ttft_p90'] * 1e3:8.1f} ms  {r['tok_s']:7.0f} tok/s  hit {r['hit']:.1%}  err {r['errors']}  "
                      f"pods {r['pods']}", flush=True)
            continue
        text = open(c).read().replace("/etc/epp/tokenizer", DEFAULT_DIR)
        if a.set:
            doc = yaml.safe_load(text)
            for item in a.set:
                key, value = item.split("=", 1)
                typ, param = key.rsplit(".", 1)
                for pl in doc["plugins"]:
                    if pl["type"] == typ:
                        pl.setdefault("parameters", {})[param] = yaml.safe_load(value)
            text = yaml.safe_dump(doc)
        for r in median_runs(s, text, rates, a.seed, a.seeds):
            print(f"{os.path.basename(c):34s} {r['rate']:6g}: TTFT p50 {r['ttft_p50'] * 1e3:7.1f} ms  p90 "
                  f"{r['ttft_p90'] * 1e3:8.1f} ms  {r['tok_s']:7.0f} tok/s  hit {r['hit']:.1%}  err {r['errors']}  "
                  f"ITL p90 {r['itl_p90'] * 1e3:5.1f} ms  E2E p90 {r['e2e_p90']:.2f} s  disagg {r['disagg']:.0%}  "
                  f"pods {r['pods']}  {r['fits']}", flush=True)


if __name__ == "__main__":
    main()
