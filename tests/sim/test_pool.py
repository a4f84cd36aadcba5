"""The pool launcher: consecutive ports, endpoints file, no orphans on SIGTERM."""
import os
import signal
import subprocess
import sys
import time
import urllib.request

import yaml

from testbed.ports import free_range

from .conftest import ROOT, TIMEOUT


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_pool_starts_writes_endpoints_and_stops_children(tmp_path):
    base = free_range(3)
    ep = tmp_path / "endpoints.yaml"
    proc = subprocess.Popen([sys.executable, "-m", "vllm_sim.pool", "--count", "3", "--base-port", str(base),
                             "--roles", "prefill,decode", "--endpoints-file", str(ep), "--",
                             "--time-scale", "10", "--served-model-name", "pool-model"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if line.strip() == "pool ready":
                break
        assert "pool ready" in lines, lines
        assert f"sim-1 127.0.0.1:{base + 1} decode" in lines
        doc = yaml.safe_load(ep.read_text())
        assert doc == {"endpoints": [
            {"name": "sim-0", "address": f"127.0.0.1:{base}", "labels": {"app": "sim", "llm-d.ai/role": "prefill"}},
            {"name": "sim-1", "address": f"127.0.0.1:{base + 1}", "labels": {"app": "sim", "llm-d.ai/role": "decode"}},
            {"name": "sim-2", "address": f"127.0.0.1:{base + 2}", "labels": {"app": "sim", "llm-d.ai/role": "prefill"}},
        ]}
        for i in range(3):
            with urllib.request.urlopen(f"http://127.0.0.1:{base + i}/v1/models", timeout=TIMEOUT) as r:
                assert b"pool-model" in r.read()
        kids = children(proc.pid)
        assert len(kids) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
        deadline = time.monotonic() + TIMEOUT       # the launcher reaps its sims before it exits
        while [k for k in kids if alive(k)] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [k for k in kids if alive(k)], "orphaned sims"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_per_sim_substitution():
    from vllm_sim.pool import substitute
    cfg = '{"endpoint": "tcp://*:{port+1000}", "topic": "kv@127.0.0.1:{port}@m", "i": {index}}'
    assert substitute(cfg, 8200, 3) == '{"endpoint": "tcp://*:9200", "topic": "kv@127.0.0.1:8200@m", "i": 3}'


def test_profiles_cycle_and_a_killed_sim_comes_back_empty(tmp_path):
    """--profiles gives each sim its profile in turn; --respawn restarts a sim that dies, on its port."""
    import json
    base = free_range(2)
    ep = tmp_path / "endpoints.yaml"
    proc = subprocess.Popen([sys.executable, "-m", "vllm_sim.pool", "--count", "2", "--base-port", str(base),
                             "--endpoints-file", str(ep), "--profiles", "llama-8b-h100,llama-8b-a100-40gb",
                             "--respawn", "--", "--time-scale", "10"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def engine(i: int) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{base + i}/debug/engine", timeout=TIMEOUT) as r:
            return json.loads(r.read())

    def wait(pred) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                if pred():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("timed out")
    try:
        wait(ep.exists)
        assert [engine(i)["profile"]["name"] for i in range(2)] == ["llama-8b-h100", "llama-8b-a100-40gb"]
        first = engine(1)["engine_id"]
        (victim,) = [k for k in children(proc.pid) if f"{base + 1}".encode() in open(f"/proc/{k}/cmdline", "rb").read()]
        os.kill(victim, signal.SIGKILL)
        wait(lambda: engine(1)["engine_id"] != first)       # a new process on the same port
        assert engine(1)["profile"]["name"] == "llama-8b-a100-40gb" and engine(1)["requests_served"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(TIMEOUT)
