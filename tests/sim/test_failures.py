"""Failure injection and abrupt exit."""
import urllib.error
import urllib.request

import orjson

from vllm_sim.failures import FAILURES

from .conftest import TIMEOUT, InProcSim


async def test_every_failure_type_has_its_status():
    for name, (status, _, typ) in FAILURES.items():
        async with InProcSim("--failure-rate", "1", "--failure-types", name) as sim:
            st, b = await sim.post("/v1/completions", {"prompt": "x", "max_tokens": 1})
            assert st == status and b["error"]["type"] == typ and b["error"]["code"] == status


async def test_failure_rate_is_a_share():
    async with InProcSim("--failure-rate", "0.5", "--time-scale", "100", "--seed", "4") as sim:
        codes = [(await sim.post("/v1/completions", {"prompt": "x", "max_tokens": 1}))[0] for _ in range(60)]
        fails = sum(1 for c in codes if c != 200)
        assert 15 <= fails <= 45
        assert (await sim.get("/health"))[0] == 200       # health is never failed


def test_exit_after_requests(sim_process):
    p = sim_process("--exit-after-requests", "2").wait_healthy()

    def post():
        req = urllib.request.Request(p.url + "/v1/completions", data=orjson.dumps({"prompt": "x", "max_tokens": 1}),
                                     headers={"Content-Type": "application/json"})
        return urllib.request.urlopen(req, timeout=TIMEOUT).status

    assert post() == 200
    try:
        post()
    except (urllib.error.URLError, ConnectionError):
        pass
    assert p.proc.wait(TIMEOUT) == 17


def test_exit_after_seconds(sim_process):
    p = sim_process("--exit-after-s", "0.5").wait_healthy()
    assert p.proc.wait(TIMEOUT) == 17
