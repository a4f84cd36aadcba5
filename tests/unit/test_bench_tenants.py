"""The benchmark's tenants (issue 16's noisy-neighbor): each tenant's arrivals and headers, per-tenant
statistics from the records and from epp's queue-time histogram, and the scenario checks."""
import math

import pytest

from hack.bench import report
from testbed import scenario
from hack.bench.loadgen import Rec, Stage

DOC = {"name": "t", "routers": ["epp-flow"], "load": {"rates": [10, 10], "duration_s": 1},
       "workload": {"type": "random", "input_min": 8, "input_max": 8, "output_min": 2, "output_max": 4,
                    "tenants": [{"name": "A", "rate_x": [0, 5], "headers": {"x-llm-d-inference-fairness-id": "ta"}},
                                {"name": "B", "rate_x": 0.2}]}}


def test_tenant_rates_per_stage_and_validation():
    s = scenario.from_dict(DOC)
    assert scenario.tenant_rates(s, 0) == {"A": 0.0, "B": 0.2}
    assert scenario.tenant_rates(s, 1) == {"A": 5.0, "B": 0.2}
    bad = scenario.merge(DOC, {"workload": {"tenants": [{"name": "A", "rate_x": [1]}]}})
    with pytest.raises(scenario.ScenarioError, match="1 values for 2 stages"):
        scenario.from_dict(bad)


def test_a_tenants_requests_carry_its_headers_and_varied_lengths():
    from testbed.workload import Workload
    import orjson
    wl = Workload(scenario.from_dict(DOC))
    items = [wl.for_tenant("A") for _ in range(20)]
    assert all(i.headers == {"x-llm-d-inference-fairness-id": "ta"} and i.tenant == "A" for i in items)
    assert {orjson.loads(i.body)["max_tokens"] for i in items} == {2, 3, 4}
    assert wl.for_tenant("B").headers == {}


def _rec(tenant, ttft=None, status=200, error="", reason="", t_send=0.0):
    r = Rec(t_send, 0.0, tenant)
    r.status, r.error, r.reason = status, error, reason
    if ttft is not None:
        r.ttft, r.e2e = ttft, ttft + 1
    return r


def test_per_tenant_statistics_with_the_epp_queue_histogram():
    st = Stage()
    st.t_start, st.t_end = 0.0, 10.0
    st.recs = [_rec("A", 0.5), _rec("A", status=429, error="http 429", reason="rejected-ttl-expired"),
               _rec("A", status=200, error="not finished at drain timeout", t_send=4.0),
               *[_rec("B", 0.1 * i) for i in range(1, 11)]]
    before = {"ta": {"le": {0.1: 0, 1.0: 0, math.inf: 0}, "sum": 0.0, "count": 0.0}}
    after = {"ta": {"le": {0.1: 1, 1.0: 9, math.inf: 10}, "sum": 4.0, "count": 10.0},
             "default-flow": {"le": {0.1: 10, 1.0: 10, math.inf: 10}, "sum": 0.2, "count": 10.0}}
    out = report.tenants(st, DOC["workload"]["tenants"], 0.5, before, after)
    a, b = out["A"], out["B"]
    assert (a["sent"], a["ok"]) == (3, 1)
    assert a["refused"] == {"429 rejected-ttl-expired": 1, "not finished at drain timeout": 1}
    assert a["ttft_p90_with_cut_s"] == (10.0 - 4.0) * 0.5      # the cut one waited at least until the cut
    assert a["queue_mean_s"] == 4.0 / 10 * 0.5
    assert a["queue_p90_s"] == pytest.approx(1.0 * 0.5)        # the 9th of 10 sits at the 1.0 bound
    assert b["queue_n"] == 10 and b["ttft_p90_s"] == pytest.approx(0.9 * 0.5)
