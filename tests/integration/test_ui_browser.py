"""The web view in a real browser: the local stack (hack/stack.py: sims, epp --ui, Envoy) under a steady
load, and headless Chromium (Debian's package) driven over the DevTools protocol. The page must show
every pod of the pool and a decision feed that grows while it is open (server-sent events, no reload),
explain the newest decision, and chart predicted against reported cache hits; a screenshot is saved."""
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from testbed.browser import Chromium
from testbed.http1 import get, post
from testbed.ports import free_listen_port

pytestmark = [pytest.mark.envoy, pytest.mark.slow]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet".split()


class Stack:
    """hack/stack.py in its own process group, read until it prints where everything is."""

    def __init__(self, tmp, pods: int = 3) -> None:
        # below the ephemeral range: the stack's own free ports (pods, epp) can never be these
        self.port, self.ui_port = free_listen_port(), free_listen_port()
        while self.ui_port == self.port:
            self.ui_port = free_listen_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-u", os.path.join(ROOT, "hack", "stack.py"), "--backend", "sim", "--pods", str(pods),
             "--port", str(self.port), "--ui-port", str(self.ui_port), "--no-demo", "--load", "0"],
            cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        self.out: list[str] = []
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.out.append(line)
                if line.startswith("Open http"):
                    ready.set()
            ready.set()
        threading.Thread(target=read, daemon=True).start()
        ready.wait(120)
        text = "".join(self.out)
        if "\nOpen http" not in text or self.proc.poll() is not None:
            self.stop()
            raise AssertionError("the stack did not come up:\n" + "".join(self.out)[-3000:])
        self.pods = re.search(r"^pods \(sim\): (.+)$", text, re.M).group(1).split(", ")
        self.url = re.search(r"^web view: (\S+)", text, re.M).group(1)
        self.metrics_port = int(re.search(r"metrics http://127\.0\.0\.1:(\d+)/metrics", text).group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)   # the stack stops every child it started
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def load(port: int, stop: threading.Event, sent: list) -> None:
    """Requests back to back: three customers' long shared prompts and now and then a short one."""
    n = 0
    while not stop.is_set():
        n += 1
        customer = n % 3
        prompt = (" ".join(WORDS[(customer * 7 + j) % 10] for j in range(300)) + f" question {n}") if n % 5 \
            else f"short question {n}"
        body = json.dumps({"model": "sim-model", "prompt": prompt, "max_tokens": 4}).encode()
        try:
            status, _, _ = post(port, "/v1/completions", body, timeout=30)
            sent.append(status)
        except OSError as e:
            sent.append(repr(e))


def test_the_page_shows_the_pool_and_a_growing_decision_feed(tmp_path):
    stack = Stack(tmp_path)
    stop, sent = threading.Event(), []
    loaders = [threading.Thread(target=load, args=(stack.port, stop, sent), daemon=True) for _ in range(3)]
    shot = tmp_path / "ui.png"
    try:
        for t in loaders:
            t.start()
        assert stack.url == f"http://127.0.0.1:{stack.ui_port}/ui"

        async def browse():
            async with Chromium(tmp_path) as page:
                await page.goto(stack.url)
                where = f"(screenshot: {shot})"
                try:
                    pods = await page.wait_for(
                        "[...document.querySelectorAll('#pool tbody tr')].map(r => r.dataset.address)",
                        lambda got: sorted(got or []) == sorted(stack.pods), what="every pod in the pool table")
                    first = await page.wait_for(
                        "Math.max(0, ...[...document.querySelectorAll('#feed tbody tr')].map(r => +r.dataset.seq))",
                        lambda seq: seq >= 3, what="the first decisions in the feed")
                    rows_first = await page.eval("document.querySelectorAll('#feed tbody tr').length")
                    # the feed keeps growing while the page stays open: pushed, not reloaded
                    later = await page.wait_for(
                        "Math.max(0, ...[...document.querySelectorAll('#feed tbody tr')].map(r => +r.dataset.seq))",
                        lambda seq: seq >= first + 10, what="ten more decisions in the feed")
                    rows_later = await page.eval("document.querySelectorAll('#feed tbody tr').length")
                    picks = await page.eval(
                        "[...document.querySelectorAll('#feed tbody tr td:nth-child(5)')].map(td => td.textContent)")
                    explained = await page.wait_for(
                        "[...document.querySelectorAll('#explain tr.pick')].map(r => r.dataset.candidate)",
                        lambda got: bool(got), what="the newest decision explained")
                    hits = await page.wait_for("document.getElementById('legend-hits').textContent",
                                               lambda t: "predicted" in t and "reported" in t,
                                               what="predicted vs reported hit rate")
                    status = await page.eval("document.getElementById('status').textContent")
                    loaded_again = await page.eval("performance.getEntriesByType('navigation').length")
                finally:
                    await asyncio.sleep(1.0)     # a couple more updates drawn into the charts
                    await page.screenshot(shot)
                return pods, first, later, rows_first, rows_later, picks, explained, hits, status, loaded_again, where

        pods, first, later, rows_first, rows_later, picks, explained, hits, status, navs, where = asyncio.run(browse())
        assert sorted(pods) == sorted(stack.pods), where
        assert later >= first + 10 and rows_later > rows_first, (first, later, rows_first, rows_later, where)
        assert navs == 1, f"the page reloaded {where}"
        assert picks and all(p.strip() in stack.pods for p in picks), (picks, where)
        assert explained[0] in stack.pods, (explained, where)
        assert "%" in hits and status.startswith("live"), (hits, status, where)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000, where
        # the prediction-accuracy metric is on epp's /metrics (the sims report cached tokens)
        text = get(stack.metrics_port, "/metrics")[1].decode()
        inf = re.search(r'epp_prefix_cache_prediction_error_tokens_bucket\{le="\+Inf",[^}]*\} (\S+)', text)
        assert inf and float(inf.group(1)) > 0, text[-2000:]
        # the APIs on the metrics port (upstream's place for them); the page itself is on --ui-port only
        st, raw = get(stack.metrics_port, "/debug/decisions?limit=5")
        doc = json.loads(raw)
        assert st == 200 and len(doc["decisions"]) == 5 and doc["cursor"] >= later, doc
        st, raw = get(stack.metrics_port, "/debug/plugins/state")
        state = json.loads(raw)["plugins"]["approx-prefix-cache-producer"]["state"]
        assert st == 200 and {p["pod"] for p in state["pods"]} <= set(stack.pods) and state["totalPods"] >= 1
        assert get(stack.metrics_port, "/ui")[0] == 404
        ok = sum(1 for s in sent if s == 200)
        assert ok >= 10, sent[-20:]
    finally:
        stop.set()
        for t in loaders:
            t.join(35)
        stack.stop()
