"""The simulation itself: determinism, what epp sees of a pod, the P/D and precise paths, virtual time."""
import json
import time

import pytest

from epp.datalayer.metrics_parse import MetricNames, parse_metrics
from epp_plan.candidates import Candidate, adapt, config_path
from epp_plan.load import from_scenario
from epp_plan.pods import Pod, PodSpec
from epp_plan.plan import Workload, run_candidate, summarize
from epp_plan.sim import Simulation
from epp_plan.stack import Stack
from testbed.scenario import engine_flags, load
from vllm_sim.engine import Request
from vllm_sim.metrics import SimMetrics

from .conftest import write_scenario


def _cfg(ref):
    with open(config_path(ref)) as fh:
        return fh.read()


def _run(path, ref="epp-approx", roles=("decode", "decode"), seed=0, stack=None):
    s = load(path)
    wl = Workload("scenario", path)
    c = Candidate(ref, ref, adapt(_cfg(ref), s.pool.model, s.pool.block_size), list(roles), workload=wl)
    return run_candidate(c, wl, [], stack or Stack(), seed=seed)


def test_same_inputs_same_outputs(tiny):
    a, b = _run(tiny), _run(tiny)
    for r in (a, b):
        r.pop("sim")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    st = a["stages"][0]
    assert st["completed"] == st["sent"] > 40 and st["errors"] == 0
    assert st["hit_rate"] > 0.3      # the shared prefixes are found again


def test_seed_moves_only_the_scrape_phases(tiny):
    a, b = _run(tiny, seed=0), _run(tiny, seed=7)
    assert a["stages"][0]["sent"] == b["stages"][0]["sent"]        # arrivals come from the scenario's seed


def test_scrape_reads_what_epp_parses_from_the_sims_page(tiny):
    s = load(tiny)
    pod = Pod(0, PodSpec("decode", engine_flags(s.pool)), list(range(100, 200)))
    e = pod.engine
    for i in range(3):
        e.add_request(Request(f"r{i}", list(range(100, 100 + 300)), 4, 0.0))
    e.step(0.0)
    pod.scrape(123.0)
    page = SimMetrics(e, "sim-model").render()
    names = MetricNames(waiting="vllm:num_requests_waiting", running="vllm:num_requests_running",
                        kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
                        lora_info="vllm:lora_requests_info", cache_info="vllm:cache_config_info")
    parsed = parse_metrics(page, names, 123.0)
    assert parsed == pod.endpoint.metrics
    assert parsed.running + parsed.waiting == 3


def test_virtual_clock_is_restored(tiny):
    real = time.monotonic
    _run(tiny)
    assert time.monotonic is real


def test_pd_requests_take_both_legs_and_pull_verified_kv(tmp_path):
    path = write_scenario(tmp_path / "pd.yaml", pool={"count": 2, "roles": "prefill,decode", "gpu_blocks": 2000},
                          workload={"type": "long_input", "input_min": 1200, "input_max": 1200, "output_len": 8},
                          load={"rates": [4], "duration_s": 3})
    r = _run(path, "epp-pd", roles=("prefill", "decode"))
    st = r["stages"][0]
    assert st["completed"] == st["sent"] > 3
    assert st["disaggregated_share"] == 1.0          # 1,200 uncached tokens > nonCachedTokens 256
    assert r["sim"]["kv_pulls"]["failed"] == 0 and r["sim"]["kv_pulls"]["ok"] == st["sent"]
    assert st["pod_requests"] == [st["sent"], st["sent"]]   # the prefill pod served every prefill leg


def test_pd_short_prompts_stay_on_the_decode_pod(tmp_path):
    path = write_scenario(tmp_path / "pd.yaml", pool={"count": 2, "roles": "prefill,decode"},
                          workload={"type": "long_input", "input_min": 100, "input_max": 100, "output_len": 8})
    st = _run(path, "epp-pd", roles=("prefill", "decode"))["stages"][0]
    assert st["completed"] == st["sent"] and st["disaggregated_share"] == 0.0


def test_precise_index_hears_the_pods_kv_events(tiny):
    s = load(tiny)
    text = adapt(_cfg("epp-precise"), s.pool.model, s.pool.block_size)
    sim = Simulation([PodSpec("decode", engine_flags(s.pool))] * 2, text, from_scenario(s)).run()
    producer = next(p for p in sim.scheduler.plugins if p.type_name == "precise-prefix-cache-producer")
    assert producer.index.stats()["entries"] > 0
    assert producer.lookups > 0 and producer.hit_blocks > 0          # matched real token blocks, not bytes


def test_path_latency_lands_in_client_ttft(tiny):
    fast = _run(tiny, stack=Stack(router_ms=0, return_ms=0))["stages"][0]
    slow = _run(tiny, stack=Stack(router_ms=40, return_ms=10))["stages"][0]
    assert slow["ttft_p50_s"] == pytest.approx(fast["ttft_p50_s"] + 0.050, abs=0.01)


def test_drain_timeout_cuts_and_counts_errors(tmp_path):
    path = write_scenario(tmp_path / "over.yaml", pool={"count": 1, "gpu_blocks": 400},
                          workload={"type": "random", "input_min": 1000, "input_max": 1000, "output_len": 64},
                          load={"rates": [100], "duration_s": 0.5, "drain_timeout_s": 0.2})
    st = _run(path, roles=("decode",))["stages"][0]
    assert st["errors"] > 0 and st["error_kinds"].get("not finished at drain timeout") == st["errors"]
    assert st["engine_s"] < 1.0


def test_same_outputs_across_processes_and_hash_seeds(tiny, tmp_path):
    """Nothing depends on set or dict order of strings (PYTHONHASHSEED) or on the process."""
    import hashlib
    import os
    import subprocess
    import sys
    digests = []
    for hs in ("1", "2"):
        out = tmp_path / f"o{hs}"
        r = subprocess.run([sys.executable, "-m", "epp_plan.cli", tiny, "--config", "epp-approx", "--weight",
                            "queue-scorer=1,2", "--jobs", "2", "--no-plots", "--out", str(out), "--json"],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONHASHSEED": hs})
        assert r.returncode == 0, r.stderr[-2000:]
        doc = json.loads(r.stdout)
        digests.append(hashlib.sha256(json.dumps([[c["name"], c["stages"]] for c in doc["candidates"]],
                                                 sort_keys=True).encode()).hexdigest())
    assert digests[0] == digests[1]


def test_repeats_give_medians_and_ranges(tiny):
    wl = Workload("scenario", tiny)
    c = Candidate("a", "a", _cfg("epp-load-only"), ["decode", "decode"], workload=wl)
    r = run_candidate(c, wl, [], Stack(), repeats=3)
    st = r["stages"][0]
    lo, hi = st["spread"]["ttft_p90_s"]
    assert r["repeats"] == 3 and lo <= st["ttft_p90_s"] <= hi


def test_agentic_sessions_send_their_turns_in_order_with_the_answers(tmp_path):
    """Load mode sessions, as the harness runs it: each session sends its turns one after another, the
    next a think time after the previous answer, its context grown by that answer (and a tool result),
    every turn with the session's x-session-id."""
    from testbed.agentic import SESSION_HEADER
    path = write_scenario(tmp_path / "agentic.yaml",
                          workload={"type": "agentic", "api": "chat", "groups": 2, "system_len": 150, "question_len": 20,
                                    "tool_min": 10, "tool_max": 20, "output_min": 4, "output_max": 8, "turns": 3,
                                    "think_s": 0.1},
                          load={"mode": "sessions", "rates": [4], "duration_s": 2})
    s = load(path)
    wl = Workload("scenario", path)
    pods = [PodSpec("decode", engine_flags(s.pool)) for _ in range(2)]
    sim = Simulation(pods, adapt(_cfg("epp-approx"), s.pool.model, s.pool.block_size), wl.build(), Stack()).run()
    st = sim.stages[0]
    done = [f for f in st.flights if f.status == 200]
    by_session = {}
    for f in st.flights:
        by_session.setdefault(f.item.session.sid, []).append(f)
    assert len(by_session) >= 4 and len(done) == len(st.flights) == 3 * len(by_session)
    for sid, flights in by_session.items():
        assert [f.item.turn for f in flights] == [0, 1, 2]
        assert all(f.item.headers == {SESSION_HEADER: sid} for f in flights)
        for prev, f in zip(flights, flights[1:]):
            assert f.t_send >= prev.t_done + 0.1 - 1e-9           # after the answer, plus the think time
            before, after = json.loads(prev.item.body)["messages"], json.loads(f.item.body)["messages"]
            assert after[:len(before)] == before and after[len(before)]["role"] == "assistant"
            assert after[len(before)]["content"]                   # the answer's text, resent
    later = [f for f in done if f.item.turn]
    assert sum(f.cached_tokens for f in later) > 0.5 * sum(f.prompt_tokens for f in later)   # each turn finds the last


def test_epps_latency_model_reads_the_virtual_clock(tiny):
    """The model learns each pod's decode time per token from its own clock: in a simulation that must be
    the virtual one (a clock bound at import kept the wall clock: ~0.5 ms per token learned against a
    simulated ITL of tens of ms)."""
    from epp.scheduling.plugins._latency_model import LatencyModel
    from epp_plan.plan import pod_flags_for
    s = load(tiny)
    wl = Workload("scenario", tiny)
    text = adapt(_cfg("epp-latency-affinity"), s.pool.model, s.pool.block_size)
    flags = pod_flags_for(wl, [])[0]
    sim = Simulation([PodSpec("decode", flags)] * 2, text, wl.build(), Stack()).run()
    models = [p for p in sim.scheduler.plugins if isinstance(p, LatencyModel)]
    learned = [pod.d * 1e3 for m in models for pod in m.pods.values() if pod.d_seen]
    flights = [f for st in sim.stages for f in st.flights]
    assert models and learned and flights
    itl = summarize(sim.stages[0], sim.pods)["itl_p50_ms"]
    assert all(0.5 * itl < d < 5 * itl for d in learned), (learned, itl)
