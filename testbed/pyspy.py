"""py-spy profiles of a live process (the benchmarks sample epp with it when asked)."""
from __future__ import annotations

import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_py_spy() -> str | None:
    return shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")


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
                for cut in ("site-packages/", ROOT + "/", "lib/python3.11/"):
                    if cut in file:
                        file = file.split(cut, 1)[1]
                frames.append(f"{name} ({file})")
            self_c[frames[-1]] = self_c.get(frames[-1], 0) + n
            for fr in set(frames):
                incl[fr] = incl.get(fr, 0) + n
    pick = lambda d: [(k, v, v / total if total else 0) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]
    return {"samples": total, "self": pick(self_c), "inclusive": pick(incl)}
