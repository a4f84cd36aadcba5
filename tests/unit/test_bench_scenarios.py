"""The harness pieces behind issue 17's scenarios, without processes: bursts, scenario keys, agentic
sessions, medians of repeats and the goal checks."""
import os
import random

import pytest

from hack.bench import agentic, goals, repeat
from testbed import scenario
from hack.bench.arrivals import Arrivals

BASE = {"name": "t", "pool": {"count": 4}, "load": {"rates": [10]}}


def test_bursts_keep_the_mean_rate_and_stay_in_their_windows():
    a = Arrivals(random.Random(3), rate=10.0, start=100.0, on=1.0, off=3.0)
    times = []
    while (t := a.next()) < 100.0 + 400.0:
        times.append(t)
    assert all((t - 100.0) % 4.0 < 1.0 for t in times)
    assert len(times) / 400.0 == pytest.approx(10.0, rel=0.05)
    steady = Arrivals(random.Random(3), rate=10.0, start=0.0)
    rng = random.Random(3)
    assert [steady.next() for _ in range(3)] == pytest.approx(list(__import__("itertools").accumulate(
        rng.expovariate(10.0) for _ in range(3))))          # no bursts: the plain Poisson draws, as before


def test_new_scenario_keys_are_checked():
    ok = scenario.from_dict({**BASE, "pool": {"count": 4, "profiles": ["llama-8b-h100", "llama-8b-a100-40gb"]},
                             "router_replicas": 2, "events": [{"stage": 1, "at_s": 1, "action": "restart", "pod": 3}],
                             "side_client": {"rate": 2, "pods": [0], "stages": [1]},
                             "goals": [{"kind": "best-epp"}]})
    assert ok.router_replicas == 2 and ok.pool.profiles[1] == "llama-8b-a100-40gb"
    bad = [{"events": [{"stage": 1, "at_s": 1, "action": "explode", "pod": 0}]},
           {"events": [{"stage": 1, "at_s": 1, "action": "restart", "pod": 4}]},
           {"events": [{"stage": 0, "at_s": 1, "action": "restart", "pod": 0}]},
           {"side_client": {"rate": 0, "pods": [0]}}, {"router_replicas": 0},
           {"load": {"rates": [1], "off_s": 2}}, {"load": {"rates": [1], "mode": "sessions"}},
           {"workload": {"type": "agentic"}}]
    for extra in bad:
        with pytest.raises(scenario.ScenarioError):
            scenario.from_dict({**BASE, **extra})


def test_agentic_sessions_grow_their_context_and_name_themselves():
    s = scenario.from_dict({**BASE, "workload": {"type": "agentic", "api": "chat", "groups": 2, "system_len": 20,
                                                   "question_len": 5, "tool_min": 3, "tool_max": 6, "turns": 3},
                            "load": {"mode": "sessions", "rates": [1]}})
    wl = agentic.AgenticWorkload(s)
    a, b = wl.new_session(), wl.new_session()
    assert a.sid != b.sid and a.messages[0] != b.messages[0]            # two agents, two tool sets
    first = wl.turn(a, 0)
    assert first.headers == {agentic.SESSION_HEADER: a.sid}
    wl.answered(a, " answer")
    second = wl.turn(a, 1)
    assert second.body.startswith(first.body[:first.body.index(b'"}]')])   # the old context is the new prefix
    assert len(a.messages) == 4


def _run(p90s, tps, cpu=(False, False, False)):
    return {"scenario": {"goals": [{"kind": "best-epp"}, {"kind": "vs-peers", "min_ttft_p90_x": 1.5},
                                   {"kind": "pair", "router": "epp-b", "baseline": "epp-a", "min_throughput_x": 1.25,
                                    "min_ttft_p90_x": 3}]},
            "routers": {n: {"status": "ok", "stages": [{"level": 10, "ttft_p90_s": p, "output_tok_per_s": t, "completed": t,
                                                          "cpu": {"machine_busy": 0.5, "cpu_bound": c, "why": "x" if c else "",
                                                                  "cores": {}}}]}
                        for (n, p), t, c in zip(p90s.items(), tps, cpu)}}


def test_medians_of_repeats_and_cpu_flags():
    runs = [_run({"epp-a": 0.3, "epp-b": 0.1, "peer": 0.2}, [100, 100, 100], (False, True, False)),
            _run({"epp-a": 0.5, "epp-b": 0.05, "peer": 0.25}, [90, 100, 100]),
            _run({"epp-a": 0.4, "epp-b": 0.3, "peer": 0.21}, [95, 100, 100])]
    med = repeat.combine(runs)
    a, b = med["routers"]["epp-a"]["stages"][0], med["routers"]["epp-b"]["stages"][0]
    assert a["ttft_p90_s"] == 0.4 and a["output_tok_per_s"] == 95 and b["ttft_p90_s"] == 0.1
    assert b["cpu"]["cpu_bound"] and b["cpu"]["why"].startswith("1/3 repeats")
    got = {g.split(":")[0]: met for g, met, _ in goals.check(med)}
    assert got["best epp config"] is True                 # epp-b 100 ms at 100 tok/s beats the peer's 210 ms
    assert got["TTFT p90 >= 1.5x lower than the best peer at stage 1 (10)"] is True
    assert got["epp-b vs epp-a at stage 1 (10)"] is True    # 4x lower TTFT p90 is enough (either ratio)


def test_goals_tell_apart_two_stages_at_one_rate():
    """churn runs 50 req/s twice (before and after the resets): the loaded stage is the last one, not the
    first stage at its rate."""
    res = _run({"epp-a": 0.1, "peer": 0.12}, [100, 100])
    for r, last in zip(res["routers"].values(), (0.1, 0.5)):
        r["stages"].append({**r["stages"][0], "ttft_p90_s": last})
    res["scenario"]["goals"] = [{"kind": "vs-peers", "min_ttft_p90_x": 1.5}, {"kind": "best-epp"}]
    (peers, met, detail), (best, best_met, best_detail) = goals.check(res)
    assert peers.endswith("stage 2 (10)") and met is True and "5.00x" in detail
    assert best_met is True and "stage 1 (10): epp-a 100 ms" in best_detail and "stage 2 (10): epp-a 100 ms" in best_detail


def test_best_epp_must_not_buy_its_latency_with_throughput():
    res = _run({"epp-a": 0.1, "peer": 0.2}, [80, 100])
    (best, met, detail), *_ = goals.check(res)
    assert met is False and "peer" in detail


def test_two_epp_replicas_share_one_ext_proc_cluster_round_robin():
    from hack.bench.replicas import spread_ext_proc
    from testbed.envoy import bootstrap
    cfg = spread_ext_proc(bootstrap(9901, {"FULL_DUPLEX_STREAMED": 8081}, epp_port=9002), [9002, 9012])
    epp = next(c for c in cfg["static_resources"]["clusters"] if c["name"] == "epp")
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"]
             for e in epp["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert ports == [9002, 9012] and epp["lb_policy"] == "ROUND_ROBIN"


def test_sims_publish_kv_events_to_every_replica():
    from hack.bench.pool import sim_flags
    flags = sim_flags(scenario.from_dict(BASE).pool, 5557, [5558])
    cfg = __import__("json").loads(flags[flags.index("--kv-events-config") + 1])
    assert cfg["endpoint"] == "tcp://127.0.0.1:5557,tcp://127.0.0.1:5558"


def test_kv_event_wait_follows_the_plugin_types_not_the_words(tmp_path):
    """A run waits for KV events only for configs that declare a precise-prefix-cache plugin: the shipped
    default's comments name precise-kv, and an epp:PATH copy of it once stalled on events nobody sends."""
    from hack.bench import routers
    assert routers.needs_kv_events("epp-precise") and routers.needs_kv_events("epp-latency-precise")
    assert not routers.needs_kv_events("epp-latency-affinity") and not routers.needs_kv_events("envoy-rr")
    copy = tmp_path / "default-copy.yaml"
    copy.write_text(open(os.path.join(os.path.dirname(__file__), "..", "..", "config", "default.yaml")).read())
    assert "precise" in copy.read_text()
    assert not routers.needs_kv_events(f"epp:{copy}")
    precise = tmp_path / "p.yaml"
    precise.write_text("plugins:\n- type: precise-prefix-cache-producer\n")
    assert routers.needs_kv_events(f"epp:{precise}")
    for bad in ("plugins: [", "just text", "plugins: 3"):
        precise.write_text(bad)
        assert not routers.needs_kv_events(f"epp:{precise}")
    assert not routers.needs_kv_events(f"epp:{tmp_path / 'missing.yaml'}")
