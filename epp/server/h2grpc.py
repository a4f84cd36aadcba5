"""A lean HTTP/2 server for exactly one gRPC method: ext_proc's bidirectional Process stream.

Why not grpcio here: measured on this project's benchmark, grpc.aio spent about 1 ms of CPU per
ext_proc stream in its own machinery (a poller thread handing each event to the event loop, a task
and several awaits per RPC), four to five times the EPP's own work per request. This server parses
frames in `data_received` and hands each message synchronously to the request's state machine, so a
request costs no task, no thread and no await; replies of one read go out in one write.

Scope, deliberately small: HTTP/2 with prior knowledge (h2c) or over TLS with ALPN h2, as Envoy's
gRPC client speaks it; HPACK decoding by the `hpack` library (responses use stateless literal
encodings); flow control both ways; PING, SETTINGS, RST_STREAM and GOAWAY; graceful drain. gRPC
message compression is not negotiated (we answer `grpc-accept-encoding: identity`).

It faces the pod network, so every buffer is bounded and every excess answered as grpc-go answers
it (h2limits.Limits, docs/transport.md); the frame handling is in h2connection.
"""
from __future__ import annotations

import asyncio
import ssl
from typing import Callable, Protocol

from .h2connection import Connection
from .h2frames import NO_ERROR
from .h2limits import Limits


class Handler(Protocol):
    """One gRPC call. on_message returns the replies to send, or an awaitable of them (the call's
    later messages wait until it is done); `closed` ends our side early. The server sets `push`: a
    function that sends replies the handler produces unasked (e.g. ending the call early)."""

    closed: bool
    push: Callable[[list], None] | None

    def on_message(self, msg): ...

    def close(self) -> None: ...


class GrpcMethodServer:
    """Serves `path` with handlers from `factory`; request and reply types are protobuf classes.
    `limits` may be a bare int, the largest message received (the other limits their defaults)."""

    def __init__(self, path: str, factory: Callable[[], Handler], request_type,
                 limits: Limits | int | None = None) -> None:
        self.path = path.encode()
        self.factory = factory
        self.parse = request_type.FromString
        if isinstance(limits, int):
            limits = Limits(max_recv_msg_size=limits)
        self.limits = limits or Limits()
        self.connections: set[Connection] = set()
        self.server: asyncio.base_events.Server | None = None
        self.draining = False

    @property
    def active_streams(self) -> int:
        return sum(len(c.streams) for c in self.connections)

    @property
    def unsent_bytes(self) -> int:
        """Reply bytes not yet taken by the peers (our frame queue and the sockets' write buffers): a
        stream is over for us once its trailers are queued, which is before the proxy has read them."""
        return sum(c.unsent_bytes for c in self.connections)

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: Connection(self), host, port, ssl=ssl_context,
                                               reuse_address=True, backlog=1024)

    async def stop(self, grace: float) -> None:
        """Refuse new connections and streams; let open streams finish for up to `grace` seconds."""
        self.draining = True
        if self.server is not None:
            self.server.close()
        for c in list(self.connections):
            c.goaway(NO_ERROR)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.active_streams and loop.time() < deadline:
            await asyncio.sleep(0.05)
        # then the peers close: each has our GOAWAY and FIN behind the last reply, and a socket closed
        # under input the peer has not read yet loses it (see Connection._end)
        linger = min(deadline, loop.time() + 2.0)
        while self.connections and loop.time() < linger:
            await asyncio.sleep(0.02)
        for c in list(self.connections):
            c.abort()
