"""kubernetes-sigs' inference-perf as an independent client (`run ... --client inference-perf`).

inference-perf needs Python >= 3.12: the harness makes out/bench-venvs/inference-perf with the first
python3.12 / python3.13 it finds (PATH, then pyenv's versions) and pip-installs `inference-perf` into it.
It generates the same workload from the scenario (its own `shared_prefix` or `random` generator, its
tokenizer = the sims' tokenizer directory, HF_HUB_OFFLINE=1), runs the scenario's stages (rates and
durations converted to wall time) against the router and its per-stage reports are converted back to
engine time. Its prompts are its own random tokens, not the harness's, so figures are comparable in
shape, not request for request. Per-stage hit rates are not available (one process runs every stage);
the run's hit rate is in the router's info.
"""
from __future__ import annotations

import glob
import json
import math
import os
import shutil
import subprocess

import yaml

from . import routers
from testbed.scenario import Scenario, stages


def base_python() -> str:
    for name in ("python3.12", "python3.13"):
        p = shutil.which(name)
        if p:
            try:
                subprocess.run([p, "-c", "import venv"], check=True, capture_output=True, timeout=30)
                return p
            except (OSError, subprocess.SubprocessError):
                pass
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python")))
    if found:
        return found[0]
    raise routers.Unavailable("inference-perf needs Python >= 3.12: none found (PATH, pyenv)")


def binary(install: bool) -> str:
    py, _ = routers.peer_python("inference-perf", install, base=base_python())
    return os.path.join(os.path.dirname(py), "inference-perf")


def config(s: Scenario, url: str, outdir: str) -> dict:
    from vllm_sim.tokenizer import DEFAULT_DIR
    w, ts = s.workload, s.pool.time_scale
    if s.load.mode != "poisson" or w.type not in ("shared_prefix", "random", "long_input") or w.api != "completions":
        raise routers.Unavailable("the inference-perf client covers open-loop completions, shared_prefix or random")
    if w.type == "shared_prefix":
        data = {"type": "shared_prefix", "shared_prefix": {
            "num_groups": w.groups, "num_prompts_per_group": w.prompts_per_group, "system_prompt_len": w.system_len,
            "question_len": w.question_len, "output_len": w.output_len, "seed": w.seed}}
    else:
        mean = (w.input_min + w.input_max) / 2
        data = {"type": "random",
                "input_distribution": {"min": w.input_min, "max": w.input_max, "mean": mean,
                                       "std_dev": max(1.0, (w.input_max - w.input_min) / 4)},
                "output_distribution": {"min": w.output_len, "max": w.output_len, "mean": w.output_len, "std_dev": 0}}
    return {
        "api": {"type": "completion", "streaming": True},
        "data": data,
        "load": {"type": "poisson", "interval": 1.0, "request_timeout": s.load.request_timeout_s / ts,
                 "stages": [{"rate": r * ts, "duration": max(1, round(s.load.duration_s / ts))} for r in stages(s)]},
        "server": {"type": "vllm", "model_name": s.pool.model, "base_url": url, "ignore_eos": True},
        "tokenizer": {"pretrained_model_name_or_path": DEFAULT_DIR},
        "storage": {"local_storage": {"path": outdir}},
        "report": {"request_lifecycle": {"summary": True, "per_stage": True, "per_request": False}},
    }


def run(s: Scenario, url: str, outdir: str, install: bool, timeout: float) -> list[dict]:
    """Runs inference-perf; returns per-stage summaries in engine time (the harness's field names)."""
    exe = binary(install)
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config(s, url, outdir), f, sort_keys=False)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(os.path.join(outdir, "inference-perf.log"), "w") as log:
        p = subprocess.run([exe, "--config_file", path], stdout=log, stderr=subprocess.STDOUT, env=env,
                           timeout=timeout, cwd=outdir)
    if p.returncode:
        raise RuntimeError(f"inference-perf exited {p.returncode} (see {outdir}/inference-perf.log)")
    return [_stage(rate, f, s.pool.time_scale) for rate, f in zip(stages(s), _stage_files(outdir))]


def _stage_files(outdir: str) -> list[str]:
    files = glob.glob(os.path.join(outdir, "**", "stage_*_lifecycle_metrics.json"), recursive=True)
    return sorted(files, key=lambda f: int(os.path.basename(f).split("_")[1]))


def _get(d: dict, *keys, default=math.nan):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d if d is not None else default


def _stage(rate: float, path: str, ts: float) -> dict:
    with open(path) as f:
        r = json.load(f)
    ok = _get(r, "successes", default={})
    lat = _get(ok, "latency", default={})
    tput = _get(ok, "throughput", default={})
    n_ok = _get(r, "successes", "count", default=0)
    n_fail = _get(r, "failures", "count", default=0)
    sec = lambda key, q: _get(lat, key, q) * ts      # noqa: E731  (wall s -> engine s)
    return {
        "mode": "poisson", "level": rate, "client": "inference-perf", "sent": n_ok + n_fail, "completed": n_ok,
        "errors": n_fail, "error_kinds": {"inference-perf failures": n_fail} if n_fail else {},
        "req_per_s": _get(tput, "requests_per_sec") / ts, "output_tok_per_s": _get(tput, "output_tokens_per_sec") / ts,
        "ttft_p50_s": sec("time_to_first_token", "median"), "ttft_p90_s": sec("time_to_first_token", "p90"),
        "itl_p50_ms": sec("inter_token_latency", "median") * 1e3, "itl_p90_ms": sec("inter_token_latency", "p90") * 1e3,
        "e2e_p50_s": sec("request_latency", "median"), "e2e_p90_s": sec("request_latency", "p90"),
        "hit_rate": math.nan, "imbalance": math.nan, "report": os.path.relpath(path, os.path.dirname(os.path.dirname(path))),
    }
