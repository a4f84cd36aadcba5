"""The ExternalProcessor gRPC service: one RequestStream per ext_proc stream."""
from __future__ import annotations

import asyncio
import logging

import grpc

from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pbg

from ..requestcontrol.interface import RequestControl
from .stream import RequestStream
from .wire import Encoded

log = logging.getLogger(__name__)


class ExternalProcessor(pbg.ExternalProcessorServicer):
    def __init__(self, control: RequestControl, max_body: int) -> None:
        self.control = control
        self.max_body = max_body
        self.active = 0

    async def Process(self, request_iterator, context):
        stream = RequestStream(self.control, self.max_body)
        self.active += 1
        pushed: set[asyncio.Task] = set()

        async def write_all(replies) -> None:
            for resp in replies:
                await context.write(_message(resp))

        def push(replies) -> None:   # replies sent unasked (an eviction), beside the pending read
            t = asyncio.ensure_future(write_all(replies))
            pushed.add(t)
            t.add_done_callback(pushed.discard)
        stream.push = push
        try:
            read, write = context.read, context.write
            while (msg := await read()) is not grpc.aio.EOF:
                out = stream.on_message(msg)
                if not isinstance(out, list):
                    out = await out      # the decision is being prepared; nothing else is read meanwhile
                for resp in out:
                    await write(_message(resp))
                if stream.closed:
                    break
        finally:
            # runs on normal end, on client cancel (CancelledError) and on errors alike
            self.active -= 1
            stream.close()


def _message(resp):
    """grpcio serializes replies itself: bytes written directly (wire.Encoded) go back to a message."""
    return resp.parsed() if isinstance(resp, Encoded) else resp
