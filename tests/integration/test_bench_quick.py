"""The benchmark harness end to end (`hack/bench.sh run ... --quick`): sim pool, Envoy round robin and
Envoy + epp, streaming load, JSON and report. A smoke test: requests complete without errors, the
tables and the plots are written; no performance assertion. Peers (sglang-router, vllm-router) are not installed here."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.envoy, pytest.mark.slow]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quick_shared_prefix(tmp_path):
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "hack.bench", "run", "hack/bench/scenarios/shared-prefix.yaml", "--quick",
                        "--no-install", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["scenario"]["quick"] is True
    assert len(res["routers"]) >= 2
    for name, r in res["routers"].items():
        assert r["status"] == "ok", (name, r)
        assert r["stages"], name
        for s in r["stages"]:
            assert s["completed"] > 0 and s["errors"] == 0, (name, s)
            assert s["output_tok_per_s"] > 0 and s["ttft_p50_s"] > 0, (name, s)
            assert 0 <= s["hit_rate"] <= 1, (name, s)
            assert "machine_busy" in s["cpu"], (name, s)
    report = (out / "report.md").read_text()
    assert "| router |" in report and "envoy-rr" in report
    # the plots come with the run (matplotlib from the bench extra), no second step
    pngs = ["ttft_p90.png", "throughput.png", "hit_rate.png"]
    assert res.get("plots") == pngs, res.get("plots_note")
    for png in pngs:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert "plots: ttft_p90.png" in report
