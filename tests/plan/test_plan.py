"""Candidates, SLO judging, the Pareto frontier, the recommendation, traces and the command line."""
import json
import os

import pytest
import yaml

from epp.scheduling.config import load as load_config
from epp_plan import cli
from epp_plan.candidates import CandidateError, expand, parse_pd, set_non_cached, set_weight
from epp_plan.plan import judge, pareto, recommend
from epp_plan.trace import TraceError, read

PD = open(os.path.join(os.path.dirname(__file__), "..", "..", "config", "pd.yaml")).read()


def test_sweep_multiplies_and_changes_only_what_it_says():
    cands = expand([("pd", PD, ["decode"] * 4, None, {})], ["1:3", "2:2"], [128, 1024],
                   [("queue-scorer", [1.0, 3.0])], "sim-model", 16)
    assert len(cands) == 2 * 2 * 2
    c = next(c for c in cands if c.settings == {"pd": "2:2", "nonCachedTokens": 1024, "weights": {"queue-scorer": 3.0}})
    assert c.roles == ["prefill", "prefill", "decode", "decode"]
    doc = yaml.safe_load(c.config_text)
    dec = next(p for p in doc["plugins"] if p["type"] == "prefix-based-pd-decider")
    assert dec["parameters"]["nonCachedTokens"] == 1024
    weights = [r["weight"] for prof in doc["schedulingProfiles"] for r in prof["plugins"] if r["pluginRef"] == "queue-scorer"]
    assert weights == [3.0, 3.0]
    load_config(c.config_text, "candidate")           # still a config epp accepts
    assert len({c.name for c in cands}) == len(cands)


def test_sweep_errors_name_the_problem():
    with pytest.raises(CandidateError, match="no scheduling profile references"):
        set_weight(PD, "no-such-scorer", 2)
    with pytest.raises(CandidateError, match="prefix-based-pd-decider"):
        set_non_cached("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: []\n", 10)
    with pytest.raises(CandidateError):
        parse_pd("3")
    assert parse_pd("0:2") == ["decode", "decode"]


def _result(name, tok, gpus, ttft90, errors=0):
    st = {"output_tok_per_s": tok, "ttft_p90_s": ttft90, "ttft_p50_s": ttft90 / 2, "itl_p90_ms": 20.0,
          "itl_p50_ms": 10.0, "e2e_p50_s": 1.0, "e2e_p90_s": 2.0, "errors": errors}
    return {"name": name, "gpus": gpus, "stages": [st]}


def test_recommendation_is_the_best_per_gpu_that_meets_the_slos():
    rs = [_result("a", 1000, 4, 0.5), _result("b", 1600, 4, 1.5), _result("c", 1200, 4, 0.8),
          _result("d", 1300, 2, 0.9, errors=3), _result("e", 700, 4, 0.4)]
    slos = {"ttft_p90": 1.0}
    for r in rs:
        judge(r, slos, -1)
    assert [r["meets_slo"] for r in rs] == [True, False, True, False, True]
    assert "ttft_p90 1.500s > 1s" in rs[1]["why"] and "3 requests not answered" in rs[3]["why"]
    assert recommend(rs)["name"] == "c"
    assert set(pareto(rs, slos)) == {"a", "c", "d", "e"}      # b: d is faster per GPU and quicker


def test_pareto_keeps_only_undominated():
    rs = [_result("fast", 1000, 1, 1.0), _result("slow-better", 500, 1, 0.5), _result("worse", 400, 1, 1.2)]
    for r in rs:
        judge(r, {}, -1)
    assert set(pareto(rs, {})) == {"fast", "slow-better"}


def test_no_candidate_meets_the_slos():
    rs = [_result("a", 1000, 4, 5.0)]
    judge(rs[0], {"ttft_p90": 1.0, "itl_p90": 0.01}, -1)
    assert recommend(rs) is None and len(rs[0]["why"]) == 2


def test_trace_prefix_groups_sessions_and_errors(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps(d) for d in [
        {"t": 1.0, "prompt_tokens": 300, "prefix_group": "g", "prefix_tokens": 200, "output_tokens": 4},
        {"t": 0.5, "prompt_tokens": 250, "prefix_group": "g", "prefix_tokens": 200},
        {"t": 2.0, "prompt_tokens": 100, "session": "s"},
        {"t": 3.0, "prompt_tokens": 180, "session": "s", "priority": -1},
        {"t": 4.0, "prompt": "plain text"}]) + "\n")
    items, api = read(str(p), "m")
    assert api == "completions" and [t for t, _ in items] == [0.0, 0.5, 1.5, 2.5, 3.5]
    bodies = [json.loads(it.body) for _, it in items]
    a, b = bodies[0]["prompt"], bodies[1]["prompt"]
    assert a[:1000] == b[:1000] and a.count(" ") == 250 and b.count(" ") == 300
    assert bodies[3]["prompt"].startswith(bodies[2]["prompt"]) and bodies[3]["prompt"].count(" ") == 180
    assert items[3][1].priority == -1 and bodies[1]["max_tokens"] == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(TraceError, match="bad.jsonl:1"):
        read(str(bad), "m")


def test_command_line_sweeps_a_trace_and_writes_a_config_epp_loads(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    lines = [{"t": i * 0.05, "prompt_tokens": 1500 if i % 2 else 200, "prefix_group": f"g{i % 3}",
              "prefix_tokens": 100, "output_tokens": 16} for i in range(40)]
    trace.write_text("\n".join(json.dumps(d) for d in lines) + "\n")
    out = tmp_path / "out"
    rc = cli.main([str(trace), "--config", "epp-pd", "--pd", "1:1,0:2", "--non-cached-tokens", "256,4096",
                   "--sim-arg=--num-gpu-blocks-override=2000", "--slo", "ttft_p90=5", "--out", str(out),
                   "--no-plots", "--export-trace", str(tmp_path / "again.jsonl")])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["candidates"]) == 3 and doc["recommended"]     # 0:2 runs once: no prefill pod, no threshold
    assert all(c["stages"][0]["completed"] == 40 for c in doc["candidates"])
    pd = [c for c in doc["candidates"] if c["roles"].get("prefill")]
    share = {c["settings"]["nonCachedTokens"]: c["stages"][0]["disaggregated_share"] for c in pd}
    assert share[256] > 0.4 and share[4096] == 0.0       # the threshold decides which prompts disaggregate
    load_config((out / "recommended.yaml").read_text(), "recommended")
    pool = json.loads((out / "recommended-pool.json").read_text())
    assert pool["roles"] and pool["gpus"] == 2
    assert "recommended" in (out / "report.md").read_text()
    assert len((tmp_path / "again.jsonl").read_text().splitlines()) == 40
    assert "**Recommended" in capsys.readouterr().out


def test_command_line_reports_bad_input(tmp_path, capsys):
    assert cli.main([str(tmp_path / "missing.jsonl"), "--no-plots", "--out", str(tmp_path)]) == 2
    assert "epp-plan:" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "x.jsonl"), "--slo", "ttft=1"]) == 2


def test_near_ties_go_to_fewer_gpus_then_lower_latency():
    rs = [_result("big", 1000, 4, 0.5), _result("small", 745, 3, 0.9), _result("quick", 985, 4, 0.3)]
    for r in rs:
        judge(r, {"ttft_p90": 1.0}, -1)
    assert recommend(rs, {"ttft_p90": 1.0})["name"] == "small"        # 248 vs 250 per GPU: a tie, 3 GPUs
    rs = rs[0::2]
    assert recommend(rs, {"ttft_p90": 1.0})["name"] == "quick"


def test_role_args_shape_one_role_and_count_its_gpus(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join(json.dumps({"t": i * 0.1, "prompt_tokens": 1200, "output_tokens": 8}) for i in range(10)) + "\n")
    out = tmp_path / "out"
    assert cli.main([str(trace), "--config", "epp-pd", "--pd", "1:1", "--role-arg=prefill=--profile=llama-70b-4xh100",
                     "--sim-arg=--num-gpu-blocks-override=2000", "--out", str(out), "--no-plots"]) == 0
    doc = json.loads((out / "results.json").read_text())
    c = doc["candidates"][0]
    assert c["gpus"] == 4 + 1 and c["stages"][0]["completed"] == 10       # a 4-GPU prefill pod, a 1-GPU decode pod
    assert cli.main([str(trace), "--role-arg=prefill", "--out", str(out)]) == 2
