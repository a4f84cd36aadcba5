"""The pinned benchmark's backend: hack/bench/instant_backend.c, compiled with gcc into the run's scratch
directory and started as one process serving every backend port (one epoll loop: its CPU is one
process group's, and it costs the shared core as little as a backend can)."""
from __future__ import annotations

import os
import shutil
import subprocess

from testbed.children import Children
from testbed.wait import wait_port

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "instant_backend.c")


def compile_backend(scratch: str) -> str:
    """The backend binary in scratch/, built from the source (gcc -O2); raises RuntimeError without gcc."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        raise RuntimeError("gcc not found: the pinned benchmark compiles hack/bench/instant_backend.c")
    os.makedirs(scratch, exist_ok=True)
    binary = os.path.join(scratch, "instant_backend")
    p = subprocess.run([gcc, "-O2", "-Wall", "-o", binary, SOURCE], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"compiling {SOURCE} failed: {p.stderr.strip()[-600:]}")
    return binary


def start(kids: Children, name: str, binary: str, ports: list[int], sse: int = 0, sse_gap_us: int = 100,
          wrap: list[str] | None = None) -> subprocess.Popen:
    """One backend process on 127.0.0.1:port for each port; returns once every port accepts."""
    cmd = [*(wrap or []), binary, *(["--sse", str(sse), "--sse-gap-us", str(sse_gap_us)] if sse else []),
           *map(str, ports)]
    p = kids.start(name, cmd)
    for port in ports:
        wait_port(port, 10, p, name)
    return p
