import os

import pytest

from epp.datalayer.address import canonical, parse_address
from epp.datalayer.file_source import EndpointsFile, EndpointsFileError, parse_endpoints
from epp.datalayer.metrics_parse import SGLANG, VLLM, MetricsParseError, parse_metrics
from epp.datalayer.store import EndpointStore

VLLM_PAGE = b"""# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting_by_reason{reason="x"} 99
vllm:num_requests_running{engine="0",model_name="m"} 4.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
vllm:lora_requests_info{max_lora="2",running_lora_adapters="a,b",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="2",running_lora_adapters="c",waiting_lora_adapters="d"} 1.8e9
vllm:cache_config_info{block_size="16",enable_prefix_caching="True",num_gpu_blocks="4096"} 1.0
"""


def test_vllm_page():
    m = parse_metrics(VLLM_PAGE, VLLM, 5.0)
    assert (m.waiting, m.running, m.kv_usage) == (5.0, 4.0, 0.5)
    assert (m.running_loras, m.waiting_loras, m.max_loras) == (("c",), ("d",), 2)
    assert (m.block_size, m.num_gpu_blocks, m.updated) == (16, 4096, 5.0)


def test_old_vllm_kv_name_and_sglang():
    m = parse_metrics(b"vllm:num_requests_waiting 1\nvllm:gpu_cache_usage_perc 0.75\n", VLLM, 1.0)
    assert (m.waiting, m.kv_usage) == (1.0, 0.75)
    m = parse_metrics(b"sglang:num_queue_reqs{a=\"b\"} 7\nsglang:num_running_reqs 2\nsglang:token_usage 0.3\n", SGLANG, 1.0)
    assert (m.waiting, m.running, m.kv_usage) == (7.0, 2.0, 0.3)


@pytest.mark.parametrize("page", [b"", b"<html>nope</html>", b"vllm:num_requests_waiting{x=\"1\" 3\n",
                                  b"vllm:num_requests_waiting abc\n", b"vllm:num_requests_waiting\n", b"\x00\xff" * 100])
def test_garbage_pages_are_errors(page):
    with pytest.raises(MetricsParseError):
        parse_metrics(page, VLLM, 1.0)


def test_addresses():
    assert parse_address("10.0.0.1:8000") == ("10.0.0.1", 8000)
    assert canonical("[::1]:80") == "[::1]:80"
    for bad in ("10.0.0.1", "host:80", "10.0.0.1:0", "10.0.0.1:70000", ":80", "[::1:80", None):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_endpoints_file_parsing():
    eps = parse_endpoints('endpoints:\n- {name: a, address: "10.0.0.1:8000", labels: {llm-d.ai/role: decode, n: 1}}\n'
                          '- {address: "10.0.0.2:8000", ready: false}\n')
    assert [(e.name, e.address, e.labels, e.ready) for e in eps] == [
        ("a", "10.0.0.1:8000", {"llm-d.ai/role": "decode", "n": "1"}, True), ("10.0.0.2:8000", "10.0.0.2:8000", {}, False)]
    assert parse_endpoints("endpoints: []") == [] and parse_endpoints("endpoints:") == []


@pytest.mark.parametrize("text,fragment", [
    ("endpoints: [", "not valid YAML"),
    ("- a", "single key 'endpoints'"),
    ("endpoints: {a: 1}", "must be a list"),
    ("endpoints: [5]", "endpoints[0]: must be a mapping"),
    ('endpoints: [{address: "10.0.0.1:80", port: 1}]', "is not an IP address"),
    ('endpoints: [{address: "10.0.0.1", port: "x"}]', "port must be an integer 1-65535"),
    ('endpoints: [{address: "10.0.0.1:80", zone: a}]', "unknown key(s) ['zone']"),
    ('endpoints: [{address: "pod.local:80"}]', "not an IP address"),
    ('endpoints: [{address: "10.0.0.1:80"}, {address: "10.0.0.1:80"}]', "duplicate address"),
    ('endpoints: [{address: "10.0.0.1:80", labels: [a]}]', "labels must be"),
    ('endpoints: [{address: "10.0.0.1:80", ready: "yes"}]', "ready must be"),
])
def test_endpoints_file_errors_name_the_problem(text, fragment):
    with pytest.raises(EndpointsFileError) as e:
        parse_endpoints(text)
    assert fragment in str(e.value)


async def test_reload_keeps_last_good_set_and_metrics(tmp_path):
    path = tmp_path / "eps.yaml"
    path.write_text('endpoints: [{name: a, address: "10.0.0.1:80"}]\n')
    store = EndpointStore()
    src = EndpointsFile(str(path), store, poll_interval=0.01)
    src.load()
    first = store.get("10.0.0.1:80")
    first.metrics.waiting = 3
    import asyncio
    task = asyncio.create_task(src.watch())
    try:
        path.write_text('endpoints: [{name: a2, address: "10.0.0.1:80"}, {name: b, address: "10.0.0.2:80"}]\n')
        os.utime(path, ns=(1, 10**18))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(store.snapshot()) == 2:
                break
        assert [e.name for e in store.snapshot()] == ["a2", "b"]
        assert store.get("10.0.0.1:80") is first and first.metrics.waiting == 3  # same object, metrics kept
        path.write_text("endpoints: [oops")
        os.utime(path, ns=(1, 2 * 10**18))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if src.reload_errors:
                break
        assert src.reload_errors == 1 and len(store.snapshot()) == 2
    finally:
        task.cancel()


def test_invalid_file_is_an_error_at_start(tmp_path):
    path = tmp_path / "eps.yaml"
    path.write_text("endpoints: 3")
    with pytest.raises(EndpointsFileError):
        EndpointsFile(str(path), EndpointStore()).load()
    with pytest.raises(OSError):
        EndpointsFile(str(tmp_path / "missing.yaml"), EndpointStore()).load()


def test_longer_names_with_our_prefix_before_ours_and_at_the_page_start():
    page = (b"vllm:num_requests_waiting_by_reason{r=\"a\"} 9\n# HELP vllm:num_requests_waiting x\n"
            b"vllm:num_requests_waiting{e=\"0\"} 2\nvllm:num_requests_waiting{e=\"1\"} 3\nother 1\n"
            b"vllm:num_requests_waiting{e=\"9\"} 100\n")  # a second block would be malformed: not read
    assert parse_metrics(page, VLLM, 1.0).waiting == 5.0
    with pytest.raises(MetricsParseError):  # only the longer name: the gauge is missing
        parse_metrics(b"vllm:num_requests_waiting_by_reason 9\n", VLLM, 1.0)


def test_slow_series_carried_over_between_full_reads():
    full = parse_metrics(VLLM_PAGE, VLLM, 1.0)
    quick = parse_metrics(b"vllm:num_requests_waiting 9\n", VLLM, 2.0, previous=full)
    assert (quick.waiting, quick.running_loras, quick.num_gpu_blocks, quick.updated) == (9.0, ("c",), 4096, 2.0)
