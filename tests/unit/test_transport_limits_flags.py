"""The transport's flags: upstream's size syntax, defaults, and the same bounds handed to grpcio."""
import pytest

from epp import flags
from epp.server.h2limits import Budget, Limits


@pytest.mark.parametrize("text,value", [("4MiB", 4 << 20), ("25MB", 25_000_000), ("65536", 65536), ("64Ki", 65536),
                                        ("1e6", 1_000_000), ("1.5Gi", 3 << 29), (" 10MiB ", 10 << 20)])
def test_sizes_read_as_upstream_reads_them(text, value):
    assert flags.size(text) == value


@pytest.mark.parametrize("argv", [["--grpc-max-recv-msg-size", "lots"], ["--grpc-max-concurrent-streams", "0"],
                                  ["--grpc-max-glitches-per-second", "-1"], ["--grpc-max-header-list-size", "4XB"]])
def test_bad_transport_flags_exit_with_usage(argv):
    with pytest.raises(SystemExit) as e:
        flags.parse(["--endpoints-file", "f", *argv])
    assert e.value.code == 2


def test_defaults_and_zero_means_default():
    lim = Limits.from_args(flags.parse(["--endpoints-file", "f"]))
    assert lim == Limits()
    assert (lim.max_recv_msg_size, lim.max_header_list_size, lim.max_concurrent_streams) == (4 << 20, 64 << 10, 1024)
    assert (lim.max_glitches_per_second, lim.keepalive_min_time, lim.header_block_cap) == (1000, 300.0, 128 << 10)
    assert Limits.from_args(flags.parse(["--endpoints-file", "f", "--grpc-max-recv-msg-size", "0"])) == Limits()
    custom = Limits.from_args(flags.parse(["--endpoints-file", "f", "--grpc-max-recv-msg-size", "10MiB",
                                           "--grpc-max-concurrent-streams", "8", "--grpc-keepalive-min-time", "10s"]))
    assert (custom.max_recv_msg_size, custom.max_concurrent_streams, custom.keepalive_min_time) == (10 << 20, 8, 10.0)


def test_grpcio_gets_the_same_bounds():
    opts = dict(Limits(max_recv_msg_size=1 << 20, max_concurrent_streams=8, keepalive_min_time=10).grpcio_options())
    assert opts["grpc.max_receive_message_length"] == 1 << 20
    assert opts["grpc.max_concurrent_streams"] == 8
    assert opts["grpc.max_metadata_size"] == 64 << 10
    assert opts["grpc.http2.min_ping_interval_without_data_ms"] == 10_000


def test_memory_bound_is_the_documented_arithmetic():
    b = Limits().memory_bound()
    assert b["stream"] == (4 << 20) + (2 << 20)
    assert b["connection"] == 1024 * b["stream"] + (1 << 20) + (256 << 10) + (1 << 20)
    assert Limits(max_concurrent_streams=16).memory_bound()["connection"] < 100 << 20


def test_budget_spends_a_burst_then_refuses():
    b = Budget(100)
    assert sum(b.spend() for _ in range(1000)) < 200   # 100 banked, plus what 1,000 calls' time refills
    assert all(Budget(0).spend() for _ in range(10_000))


def test_limits_refuse_nonsense():
    with pytest.raises(ValueError):
        Limits(stream_window=1 << 30, connection_window=1 << 20)
    with pytest.raises(ValueError):
        Limits(max_frame_size=1000)
