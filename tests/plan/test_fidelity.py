"""The planner against the wall-clock benchmark (docs/planner.md, "Fidelity"): the numbers of one
benchmark run per scenario are kept in tests/data/plan_fidelity.json (python -m epp_plan.fidelity
writes them); the planner simulates the same scenarios and configs, its stack calibrated from those
runs, and must land within 10% on throughput and on TTFT p50 / p90. Rows where a larger gap remains
are listed with their bound and the reason the docs give (the benchmark machine, not the model).

The references are the routing of the epp they were measured with (their "epp" field): a change to a
plugin's behaviour changes the wall-clock numbers too, and this test then says so; rerun the three
benchmarks and re-record them (docs/planner.md, "Fidelity")."""
import json
import os

import pytest

from epp_plan.fidelity import METRICS, deviation, simulate

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "plan_fidelity.json")
TOL = 0.10
CPU = "the stage ran CPU-bound on the shared 2-core machine (the benchmark flags it): proxy hops there take far longer than the calibrated constant"
# (scenario, variant, router, level, metric) -> (bound, why)
KNOWN = {
    ("shared-prefix", "", "epp-approx", 20.0, "ttft_p90_s"): (0.20, CPU + "; 5 ms of engine time"),
    ("shared-prefix", "", "epp-load-only", 20.0, "ttft_p90_s"): (0.25, CPU + "; the bench value lies in the planner's seed range"),
    ("long-input", "pd-1:1", "epp-pd", 6.0, "ttft_p50_s"): (0.15, CPU + "; four more HTTP hops per request (sidecar, KV read and release)"),
    ("long-input", "pd-3:1", "epp-pd", 6.0, "ttft_p50_s"): (0.15, CPU + "; four more HTTP hops per request (sidecar, KV read and release)"),
    ("precise-kv", "", "epp-approx", 60.0, "ttft_p90_s"): (0.15, "the bench's hit rate was 4 points lower (68.9% vs 72.7%): more full prefills in the tail"),
}
# per scenario: stages compared (0: all) and planner runs (seeds) whose median is compared
PLAN = {"shared-prefix": (0, 3), "long-input": (2, 1), "precise-kv": (1, 1)}


def _refs():
    with open(DATA) as fh:
        return {os.path.splitext(os.path.basename(r["scenario"]))[0]: r for r in json.load(fh)}


@pytest.mark.parametrize("name", list(PLAN))
def test_planner_agrees_with_the_wall_clock_benchmark(name):
    ref = _refs()[name]
    stages, repeats = PLAN[name]
    rows = simulate(ref, max_stages=stages, repeats=repeats)
    assert rows and all(r["plan"]["output_tok_per_s"] > 0 for r in rows)
    misses = []
    for r in rows:
        for k in METRICS:
            d = deviation(r["plan"][k], r["bench"][k])
            bound, _ = KNOWN.get((name, r["variant"], r["router"], r["level"], k), (TOL, ""))
            if k == "output_tok_per_s":
                bound = TOL          # throughput: no exceptions
            if not abs(d) <= bound:
                misses.append(f"{r['variant'] or '-'} {r['router']} {r['level']:g} {k}: bench {r['bench'][k]:.4g}, "
                              f"plan {r['plan'][k]:.4g} ({d:+.1%}, bound {bound:.0%})")
    assert not misses, "\n".join(misses)
