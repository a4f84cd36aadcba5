"""Things that happen to the pool behind the router's back during a stage (the churn scenario).

    events:                                   # stage: 1-based; at_s: engine seconds after the stage starts
      - {stage: 2, at_s: 3, action: restart, pod: 1}             # the pod's process dies (SIGKILL) and the
                                                                 #   pool starts it again on its port: empty caches
      - {stage: 2, at_s: 5, action: reset_prefix_cache, pod: 2}  # POST /reset_prefix_cache (vLLM's endpoint)
    side_client: {rate: 4, pods: [3], stages: [2, 3]}            # engine req/s of the workload's own prompts
                                                                 #   sent straight to those pods, bypassing the router

A restart needs the pool started with --respawn (the harness adds it when a scenario has one). The side
client's requests are not counted in the stage's rows; what it sent and how it went is in the stage's
`events` entry.
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import aiohttp


def needs_respawn(s) -> bool:
    return any(ev["action"] == "restart" for ev in s.events or [])


def sim_pid(pool, index: int) -> int | None:
    """The pid of the sim serving pod `index` (a child of the pool launcher with that --port)."""
    port = pool.addresses[index].rsplit(":", 1)[1]
    for pid in pool.sim_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        for a, b in zip(args, args[1:]):
            if a == b"--port" and b.decode() == port:
                return pid
    return None


class StageEvents:
    """Runs one stage's events and side client next to the load generator; `summary()` says what happened."""

    def __init__(self, s, stage: int, pool, http: aiohttp.ClientSession, workload_factory) -> None:
        self.s, self.stage, self.pool, self.http = s, stage, pool, http
        self.ts = s.pool.time_scale
        self.events = [ev for ev in s.events or [] if ev["stage"] == stage]
        sc = s.side_client or {}
        self.side = sc if sc and stage in (sc.get("stages") or []) else None
        self.workload_factory = workload_factory
        self.log: list[dict] = []
        self.side_sent = self.side_ok = 0
        self._tasks: list[asyncio.Task] = []
        self._t0 = 0.0

    @property
    def active(self) -> bool:
        return bool(self.events or self.side)

    def start(self) -> None:
        self._t0 = time.perf_counter()
        for ev in self.events:
            self._tasks.append(asyncio.create_task(self._event(ev)))
        if self.side:
            self._tasks.append(asyncio.create_task(self._side_client()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def summary(self) -> dict:
        out = {"actions": self.log}
        if self.side:
            out["side_client"] = {"sent": self.side_sent, "ok": self.side_ok, "pods": self.side["pods"],
                                  "rate": self.side["rate"]}
        return out

    def _at(self) -> float:
        return round((time.perf_counter() - self._t0) * self.ts, 2)

    async def _event(self, ev: dict) -> None:
        await asyncio.sleep(ev["at_s"] / self.ts)
        pod = ev["pod"]
        addr = self.pool.addresses[pod]
        if ev["action"] == "restart":
            pid = sim_pid(self.pool, pod)
            if pid is None:
                self.log.append({"at_s": self._at(), "action": "restart", "pod": addr, "result": "no process"})
                return
            os.kill(pid, signal.SIGKILL)     # a crash: in-flight requests fail, the pool starts it again
            self.log.append({"at_s": self._at(), "action": "restart", "pod": addr, "result": f"killed {pid}"})
            return
        try:
            async with self.http.post(f"http://{addr}/reset_prefix_cache") as r:
                result = f"http {r.status}"
        except (aiohttp.ClientError, OSError) as e:
            result = f"{type(e).__name__}"
        self.log.append({"at_s": self._at(), "action": ev["action"], "pod": addr, "result": result})

    async def _side_client(self) -> None:
        rng = random.Random(1000 + self.stage)
        wl = self.workload_factory(1000 + self.stage)
        rate = self.side["rate"] * self.ts             # wall req/s
        pods = [self.pool.addresses[i] for i in self.side["pods"]]
        path = "/v1/chat/completions" if self.s.workload.api == "chat" else "/v1/completions"
        pending: set[asyncio.Task] = set()
        try:
            while True:
                await asyncio.sleep(rng.expovariate(rate))
                # the run's own prompts (shared-prefix: a random one of the cycle), so the pods it warms hold
                # prefixes the router's traffic also asks for
                bodies = getattr(wl, "bodies", None)
                body = rng.choice(bodies) if bodies else wl.next().body
                url = f"http://{rng.choice(pods)}{path}"
                t = asyncio.create_task(self._send(url, body))
                pending.add(t)
                t.add_done_callback(pending.discard)
        finally:
            for t in pending:
                t.cancel()

    async def _send(self, url: str, body: bytes) -> None:
        self.side_sent += 1
        try:
            async with self.http.post(url, data=body, headers={"content-type": "application/json"}) as r:
                await r.read()
                if r.status == 200:
                    self.side_ok += 1
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            pass
