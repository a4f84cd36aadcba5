"""The shared helpers (testbed/) the tests, the stack and the benchmarks stand on: an endpoints file epp
reads as written, and a wait that returns what it waited for and fails as a test failure."""
import asyncio
import types

import pytest

from epp.datalayer.file_source import parse_endpoints
from testbed.endpoints import write_endpoints
from testbed.wait import Timeout, until


def test_every_form_of_endpoint_lands_in_a_file_epp_reads(tmp_path):
    path = tmp_path / "endpoints.yaml"
    pod = types.SimpleNamespace(name="standin", address="127.0.0.1:9000")
    write_endpoints(path, [8001, "127.0.0.2:8002", ("p", "127.0.0.3:8003"),
                           ("d", "127.0.0.4:8004", {"llm-d.ai/role": "decode"}), pod], {"app": "sim"})
    got = [(e.name, e.address, dict(e.labels)) for e in parse_endpoints(path.read_text())]
    assert got == [("pod-0", "127.0.0.1:8001", {"app": "sim"}), ("pod-1", "127.0.0.2:8002", {"app": "sim"}),
                   ("p", "127.0.0.3:8003", {"app": "sim"}), ("d", "127.0.0.4:8004", {"llm-d.ai/role": "decode"}),
                   ("standin", "127.0.0.1:9000", {"app": "sim"})]
    write_endpoints(path, [])
    assert parse_endpoints(path.read_text()) == []
    assert not (tmp_path / "endpoints.yaml.tmp").exists()


async def test_until_returns_the_value_that_passed():
    calls = []

    async def probe():
        calls.append(1)
        return len(calls)
    assert await until(probe, "three calls", test=lambda n: n >= 3) == 3
    assert await until(lambda: "ready", "a plain value") == "ready"


async def test_until_wakes_on_the_event_and_times_out_as_a_test_failure():
    state, wake = {"n": 0}, asyncio.Event()

    async def producer():
        for _ in range(3):
            await asyncio.sleep(0)
            state["n"] += 1
            wake.set()
    task = asyncio.create_task(producer())
    assert await until(lambda: state["n"] == 3, "three changes", 5, wake=wake)
    await task
    with pytest.raises(Timeout, match="never") as err:
        await until(lambda: False, "never", 0.05)
    assert isinstance(err.value, AssertionError) and isinstance(err.value, TimeoutError)
