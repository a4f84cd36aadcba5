"""Waiting for something to happen: a port to open, a file to appear, a condition to hold.

Every timeout here only bounds a hang: nothing waits a fixed time, so a slow, loaded host makes a run
slower, never wrong."""
from __future__ import annotations

import asyncio
import inspect
import os
import socket
import subprocess
import time

HANG = 60.0  # a bound only a hang reaches, whatever the host's load


class Timeout(AssertionError, TimeoutError):
    """A wait ran out: a test failure (AssertionError) that a retry loop can still catch as TimeoutError."""


def wait_port(port: int, timeout: float = 30, proc: subprocess.Popen | None = None, what: str = "process") -> None:
    """Returns once 127.0.0.1:port accepts; raises if proc exits first or the time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not open port {port} in {timeout:.0f}s")


def wait_file(path: str, timeout: float = 30, proc: subprocess.Popen | None = None, what: str = "process",
              every: float = 0.05) -> None:
    """Returns once path exists (a child writes it when it is up); raises if proc exits first or the time runs out."""
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} during start-up")
        if time.time() > deadline:
            raise TimeoutError(f"{what} did not write {os.path.basename(path)} in {timeout:.0f}s")
        time.sleep(every)


async def until(probe, what: str = "condition", timeout: float = HANG, *, test=bool, every: float = 0.01,
                wake: asyncio.Event | None = None):
    """Calls probe() (a plain or an async function) until test(its result) holds; returns that result.

    Polls every `every` seconds or, given `wake` (an asyncio.Event the producer sets on each change),
    sleeps until woken. Raises Timeout naming `what` and the last result once `timeout` has passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if wake is not None:
            wake.clear()  # before the probe: a change during it wakes the next wait at once
        got = probe()
        if inspect.isawaitable(got):
            got = await got
        if test(got):
            return got
        left = deadline - loop.time()
        if left <= 0:
            raise Timeout(f"timed out waiting for {what} (last: {got!r})")
        if wake is None:
            await asyncio.sleep(every)
            continue
        try:
            await asyncio.wait_for(wake.wait(), left)
        except asyncio.TimeoutError:
            pass


def wait_for(cond, timeout: float = 10.0, what: str = "") -> None:
    """The blocking form of until() for tests that run no event loop: returns once cond() is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise Timeout(f"timed out: {what}")
