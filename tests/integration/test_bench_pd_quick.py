"""The P/D benchmark end to end in its quick form: aggregated and 1:1 prefill:decode variants run on
real sims (decode sims behind epp-sidecar), Envoy and epp, and the table is written. A smoke test of
the harness, not a performance check: it asserts the requests completed and that the P/D variant
really sent prefills to the prefill pod."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_pd_bench_quick(tmp_path):
    out = tmp_path / "pd"
    r = subprocess.run([sys.executable, "-m", "hack.bench.pd", "hack/bench/scenarios/pd/long-input.yaml", "--quick",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"aggregated", "pd-1:1"}
    for variant, doc in res.items():
        (router,) = doc["routers"].values()
        assert router["status"] == "ok", (variant, router)
        st = router["stages"][0]
        assert st["completed"] == st["sent"] > 0 and st["errors"] == 0, (variant, st)
        assert st["output_tok_per_s"] > 0 and st["ttft_p50_s"] > 0
    pd = res["pd-1:1"]["routers"]["epp-pd"]["stages"][0]
    prefill_pod, decode_pod = pd["pod_requests"]          # roles cycle prefill,decode over the sims
    assert prefill_pod == decode_pod == pd["completed"], pd["pod_requests"]   # every request took both legs
    report = (out / "report.md").read_text()
    assert "| aggregated |" in report and "| pd-1:1 |" in report
