"""The bounds of the native ext_proc transport, and the grpcio options that mean the same.

Each excess gets what a grpc-go server (the Go EPPs' transport) answers, so Envoy sees the same thing
from either EPP. docs/transport.md tells, for each limit, its flag, its default and why, and the memory
it bounds; `Limits.memory_bound()` is that arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass
from time import monotonic


@dataclass(frozen=True)
class Limits:
    # grpc-go's default receive limit; a larger message is RESOURCE_EXHAUSTED on its own stream
    max_recv_msg_size: int = 4 << 20
    # grpc-go's default send limit (math.MaxInt32)
    max_send_msg_size: int = (1 << 31) - 1
    # Envoy's own request-header limit is 60 KiB; ext_proc call metadata is a few hundred bytes
    max_header_list_size: int = 64 << 10
    # one Envoy worker multiplexes all its ext_proc calls on one connection: room for 1,000 in flight
    max_concurrent_streams: int = 1024
    # frames that cost work without carrying a call forward (see Connection._glitch), per second
    max_glitches_per_second: int = 1000
    # grpc-go's keepalive EnforcementPolicy.MinTime: pings closer than this, with no reply data in
    # between, are strikes; the third strike is GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings")
    keepalive_min_time: float = 300.0
    max_ping_strikes: int = 2
    # receive windows: a stream's window bounds what waits for a busy handler; the connection's is
    # credited on arrival (as grpc-go does), so it only needs to keep the pipe full
    stream_window: int = 1 << 20
    connection_window: int = 64 << 20
    max_frame_size: int = 1 << 20      # larger DATA frames mean fewer frames for big bodies
    # above this much unsent output the connection stops reading until the peer catches up
    write_buffer_high: int = 1 << 20

    def __post_init__(self) -> None:
        if not 16384 <= self.max_frame_size < 1 << 24:
            raise ValueError("max_frame_size must be in [16384, 2^24)")
        if not 65535 <= self.stream_window <= self.connection_window < 1 << 31:
            raise ValueError("windows must satisfy 65535 <= stream window <= connection window < 2^31")
        for name in ("max_recv_msg_size", "max_send_msg_size", "max_header_list_size", "max_concurrent_streams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")

    @property
    def header_block_cap(self) -> int:
        """Encoded header block (HEADERS + CONTINUATION) beyond which the connection is closed rather
        than the block buffered; up to it, an oversized list is decoded (HPACK stays in sync) and only
        its stream refused. Twice the list limit, as Go's http2 allows before giving up on a block."""
        return 2 * self.max_header_list_size

    def memory_bound(self) -> dict[str, int]:
        """Bytes the transport may hold, worst case, per stream and per connection, beside what the
        handlers keep (a request body the EPP buffers to parse it is the handler's)."""
        # a partial message, the messages held for a busy handler (one window), and the replies to
        # them held for the peer's window (ext_proc replies are no larger than what they answer)
        stream = self.max_recv_msg_size + 2 * self.stream_window
        # plus one partial frame, one header block being gathered and decoded, and unsent output
        connection = (self.max_concurrent_streams * stream + self.max_frame_size + 2 * self.header_block_cap
                      + self.write_buffer_high)
        return {"stream": stream, "connection": connection}

    @classmethod
    def from_args(cls, args) -> "Limits":
        """From epp's flags; a size of 0 means the default, as upstream's flags read it."""
        d = cls()
        return cls(max_recv_msg_size=args.grpc_max_recv_msg_size or d.max_recv_msg_size,
                   max_send_msg_size=args.grpc_max_send_msg_size or d.max_send_msg_size,
                   max_header_list_size=args.grpc_max_header_list_size or d.max_header_list_size,
                   max_concurrent_streams=args.grpc_max_concurrent_streams,
                   max_glitches_per_second=args.grpc_max_glitches_per_second,
                   keepalive_min_time=args.grpc_keepalive_min_time)

    def grpcio_options(self) -> list[tuple[str, int]]:
        """The same bounds for the grpcio transport (grpc-core channel arguments)."""
        return [("grpc.max_receive_message_length", self.max_recv_msg_size),
                ("grpc.max_send_message_length", self.max_send_msg_size),
                ("grpc.max_concurrent_streams", self.max_concurrent_streams),
                # grpc-core's soft limit (its hard limit follows at 1.25x; between the two it refuses
                # at random). Setting the hard limit as well made grpc-core buffer a CONTINUATION
                # flood (+86 MiB for 256 MiB sent), so it is left to grpc-core.
                ("grpc.max_metadata_size", self.max_header_list_size),
                ("grpc.http2.min_ping_interval_without_data_ms", int(self.keepalive_min_time * 1000)),
                ("grpc.http2.max_ping_strikes", self.max_ping_strikes)]


class Budget:
    """A token bucket: `rate` tokens a second, at most one second's worth banked; 0 means no limit."""

    __slots__ = ("rate", "tokens", "stamp")

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.stamp = monotonic()

    def spend(self) -> bool:
        if not self.rate:
            return True
        now = monotonic()
        self.tokens = min(float(self.rate), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
