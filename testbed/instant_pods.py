"""Instant stand-in pods for the overhead and scrape benchmarks: many pods in one asyncio process of
their own, each answering a completion at once from a cheap request path and serving an optionally
vLLM-sized /metrics page. The process writes its pods' ports to a file once they listen and, every
0.5 s, how many /metrics pages they served (`<ports file>.stats`).

    python -m testbed.instant_pods --count 8 --ports-file PATH [--metrics-kb 40]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time

from .aio import run
from .children import Children
from .standin_pod import Pod
from .wait import wait_file


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


class InstantPod(Pod):
    """The stand-in pod with a cheap request path (no JSON parse or hash of the body: the pod should
    cost the same whichever path the request took, and as little as possible) and an optional
    vLLM-sized /metrics page."""

    metrics_served = 0

    def __init__(self, port: int, extra_metrics: bytes = b"") -> None:
        super().__init__(port)
        self.extra_metrics = extra_metrics

    def metrics_text(self) -> bytes:
        InstantPod.metrics_served += 1
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


async def serve(count: int, ports_file: str, metrics_kb: float) -> None:
    extra = vllm_histograms(metrics_kb)
    pods = [InstantPod(0, extra) for _ in range(count)]
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
            json.dump({"t": time.monotonic(), "metrics_served": InstantPod.metrics_served, "page_bytes": page}, f)
        os.replace(ports_file + ".stats.tmp", ports_file + ".stats")
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass
    for p in pods:
        await p.stop()


def start_pods(kids: Children, count: int, metrics_kb: float, name: str = "pods") -> tuple[subprocess.Popen, list[int]]:
    """count instant pods in a child process `name`; (the process, the pods' ports) once they listen."""
    ports_file = os.path.join(kids.logdir, f"{name}.ports.json")
    p = kids.start(name, [sys.executable, "-m", "testbed.instant_pods", "--count", str(count),
                          "--ports-file", ports_file, "--metrics-kb", str(metrics_kb)])
    wait_file(ports_file, 30, p, f"the pods (log: {kids.log(name)})")
    with open(ports_file) as f:
        return p, json.load(f)


def pod_stats(kids: Children, name: str = "pods") -> dict:
    """The pods process's latest counters (written every 0.5 s)."""
    try:
        with open(os.path.join(kids.logdir, f"{name}.ports.json.stats")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--ports-file", required=True)
    ap.add_argument("--metrics-kb", type=float, default=0)
    a = ap.parse_args()
    run(serve(a.count, a.ports_file, a.metrics_kb))


if __name__ == "__main__":
    main()
