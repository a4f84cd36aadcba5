"""PNG plots of a run's results.json: p90 TTFT and output tokens/s against the stage level, one line per
router. Standalone (json + matplotlib only) so the harness can run it with another venv's Python when
the project's has no matplotlib:

    python hack/bench/plot.py out/bench/<run>/results.json
"""
from __future__ import annotations

import json
import os
import sys


def plot(results_path: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(results_path) as f:
        res = json.load(f)
    outdir = os.path.dirname(os.path.abspath(results_path))
    mode = res["scenario"]["load"]["mode"]
    xlabel = {"poisson": "offered rate (engine req/s)", "sessions": "sessions/s (engine)"}.get(mode, "concurrency")
    made = []
    for key, label, fname, log in (("ttft_p90_s", "TTFT p90 (engine s)", "ttft_p90.png", True),
                                   ("output_tok_per_s", "output tokens/s (engine time)", "throughput.png", False),
                                   ("hit_rate", "cluster prefix hit rate", "hit_rate.png", False)):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name, r in res["routers"].items():
            st = [s for s in r.get("stages", []) if s.get(key) is not None]
            if not st:
                continue
            xs = [s["level"] for s in st]
            ys = [s[key] for s in st]
            line, = ax.plot(xs, ys, marker="o", label=name)
            bound = [(x, y) for x, y, s in zip(xs, ys, st) if s["cpu"]["cpu_bound"]]
            if bound:
                ax.scatter(*zip(*bound), s=90, facecolors="none", edgecolors=line.get_color())
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.set_title(f"{res['scenario']['name']}: {label}" + ("  (ringed: CPU-bound)" if key == "ttft_p90_s" else ""),
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(outdir, fname)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


if __name__ == "__main__":
    for p in plot(sys.argv[1]):
        print(p)
