"""wrk, the pinned benchmark's closed-loop load generator: its binary (Debian's package, installed with
apt-get when missing), the JSON bodies it sends, and one run of it with hack/bench/pinned.lua."""
from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.path.join(HERE, "pinned.lua")
VARIANTS = 8   # distinct prompts per size, sent in turn: prefix-aware routers see a few keys, not one

WORDS = ("the of and to in is for on that with as are by this from at be or an was which you your can "
         "model request token cache prefix router pool endpoint latency answer prompt stream gateway").split()


class Missing(Exception):
    """wrk is not installed and could not be."""


def ensure_wrk(install: bool = True) -> str:
    """wrk's path; installs Debian's package quietly (as root, with apt-get) when it is missing."""
    path = shutil.which("wrk")
    if path or not install:
        if not path:
            raise Missing("wrk not found (apt-get install wrk)")
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Missing("wrk not found and apt-get is not usable here (apt-get install wrk)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if r.returncode != 0 and cmd[1] == "install":
            raise Missing(f"apt-get install wrk failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    path = shutil.which("wrk")
    if not path:
        raise Missing("wrk still not found after apt-get install wrk")
    return path


def parse_size(text: str) -> int:
    """'16k' -> 16384, '1m' -> 1048576, '512' -> 512 (bytes)."""
    t = text.strip().lower()
    mult = {"k": 1 << 10, "m": 1 << 20}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def body(size: int, variant: int, stream: bool = False) -> bytes:
    """An OpenAI completions request of exactly `size` bytes (when size allows): a prompt of words, its
    first words naming the variant, so the variants differ from the first token on."""
    rng = random.Random(size * 100 + variant)
    head = json.dumps({"model": "m", "max_tokens": 16, "stream": stream})[:-1] + ', "prompt": "'
    text = f"variant {variant}:"
    words = []
    room = size - len(head) - len(text) - 2
    n = 0
    while n < room:
        w = " " + rng.choice(WORDS)
        words.append(w)
        n += len(w)
    prompt = (text + "".join(words))[:max(0, size - len(head) - 2)]
    return (head + prompt + '"}').encode()


def write_bodies(directory: str, size: int, stream: bool = False) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    paths = []
    for v in range(VARIANTS):
        path = os.path.join(directory, f"body-{size}-{'sse-' if stream else ''}{v}.json")
        with open(path, "wb") as f:
            f.write(body(size, v, stream))
        paths.append(path)
    return paths


def command(url: str, conns: int, seconds: float, bodies: list[str], core: int | None, timeout_s: int = 10) -> list[str]:
    """A wrk command line; wrk takes whole seconds, so `seconds` is rounded (1 at least)."""
    pin = ["taskset", "-c", str(core)] if core is not None else []
    return [*pin, "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s}s", "-s", LUA, url,
            "--", *bodies]


def run(cmd: list[str]) -> dict:
    """Runs one wrk command; its results (PINNED line of pinned.lua) plus failed (sum of every error
    count) and rps. Raises RuntimeError when wrk fails or prints no result."""
    duration = next((float(a[2:-1]) for a in cmd if a.startswith("-d") and a.endswith("s")), 10.0)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("PINNED ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({p.returncode}): {shlex.join(cmd[:8])} ...: "
                           f"{(p.stderr or p.stdout).strip()[-400:]}")
    r = json.loads(line[7:])
    r["failed"] = sum(r["errors"].values())
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
    return r
