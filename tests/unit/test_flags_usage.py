import pytest

from epp import flags
from epp.requestcontrol.usage import UsageReader


def test_go_style_flags():
    a = flags.parse(["--endpoints-file", "f", "--secure-serving=false", "-grpc-port", "1", "--refresh-metrics-interval",
                     "50ms", "--metrics-staleness-threshold=1m30s", "--objective", "batch=-1", "--decision-header"])
    assert (a.secure_serving, a.grpc_port, a.refresh_metrics_interval, a.metrics_staleness_threshold) == (False, 1, 0.05, 90.0)
    assert a.objective == [("batch", -1)] and a.decision_header is True
    d = flags.parse(["--endpoints-file", "f"])
    assert (d.grpc_port, d.grpc_health_port, d.metrics_port, d.secure_serving) == (9002, 9003, 9090, True)


@pytest.mark.parametrize("argv", [["--endpoints-file", "f", "--secure-serving=maybe"],
                                  ["--endpoints-file", "f", "--refresh-metrics-interval", "fast"],
                                  ["--endpoints-file", "f", "--objective", "nope"]])
def test_bad_flags_exit_with_usage(argv):
    with pytest.raises(SystemExit) as e:
        flags.parse(argv)
    assert e.value.code == 2


@pytest.mark.parametrize("argv", [[], ["--pool-name", "p", "--endpoints-file", "f"],
                                  ["--endpoint-selector", "app=vllm"],
                                  ["--endpoint-selector", "app=vllm", "--endpoint-target-ports", "80,x"],
                                  ["--endpoints-file", "f", "--config-file", "a", "--config-text", "b"]])
def test_invalid_flag_combinations_are_validation_errors(argv):
    """Upstream's Validate(): the process exits 1 (epp.cli), not 2 with usage."""
    with pytest.raises(flags.FlagError):
        flags.parse(argv)


def test_kubernetes_sources():
    a = flags.parse(["--pool-name", "p", "--pool-namespace", "ns", "--ha-enable-leader-election"])
    assert (a.pool_name, a.pool_namespace, a.pool_group, a.ha_enable_leader_election) == \
        ("p", "ns", "inference.networking.k8s.io", True)
    s = flags.parse(["--endpoint-selector", "app=vllm", "--endpoint-target-ports", "8000, 8001"])
    assert s.endpoint_target_ports == [8000, 8001]


def test_usage_from_json_answer_in_pieces():
    r = UsageReader(sse=False)
    for piece in (b'{"id": "x", "usage": {"prompt_tokens": 11, "comp', b'letion_tokens": 2}}'):
        r.feed(piece)
    u = r.finish()
    assert (u.prompt_tokens, u.completion_tokens, u.seen) == (11, 2, True)


def test_usage_sse_final_line_without_newline_and_responses_api():
    r = UsageReader(sse=True)
    r.feed(b'data: {"type": "response.completed", "response": {"usage": {"input_tokens": 4, "output_tokens": 6,'
           b' "input_tokens_details": {"cached_tokens": 2}}}}')
    u = r.finish()
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens) == (4, 6, 2)


def test_usage_ignores_garbage():
    r = UsageReader(sse=True)
    r.feed(b"data: {usage broken\n\n")
    assert not r.finish().seen
    r = UsageReader(sse=False)
    r.feed(b"not json usage")
    assert not r.finish().seen
