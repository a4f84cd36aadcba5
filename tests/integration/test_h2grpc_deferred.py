"""The native ext_proc transport with a handler that answers a message later (the prepare step): the
call's later messages wait their turn, replies keep their order, a half-close while waiting ends the
call only after the answers, and a client that resets the call mid-wait leaves nothing behind."""
import asyncio

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pbg

from epp.server.h2grpc import GrpcMethodServer
from testbed.ports import free_port

METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


class Handler:
    """Replies with one ProcessingResponse per message; the body message is answered after a wait."""
    instances = []

    def __init__(self) -> None:
        self.closed = False
        self.released = False
        self.gate = asyncio.Event()
        Handler.instances.append(self)

    def on_message(self, msg):
        kind = msg.WhichOneof("request")
        reply = {"request_headers": pb.ProcessingResponse(request_headers=pb.HeadersResponse()),
                 "request_body": pb.ProcessingResponse(request_body=pb.BodyResponse()),
                 "request_trailers": pb.ProcessingResponse(request_trailers=pb.TrailersResponse())}[kind]
        if kind == "request_body":
            return self._later(reply)
        return [reply]

    async def _later(self, reply):
        await self.gate.wait()
        return [reply]

    def close(self) -> None:
        self.released = True


def messages():
    return [pb.ProcessingRequest(request_headers=pb.HttpHeaders()),
            pb.ProcessingRequest(request_body=pb.HttpBody(body=b"x", end_of_stream=True)),
            pb.ProcessingRequest(request_trailers=pb.HttpTrailers())]


async def serve():
    Handler.instances.clear()
    port = free_port()
    srv = GrpcMethodServer(METHOD, Handler, pb.ProcessingRequest, 1 << 20)
    await srv.start("127.0.0.1", port)
    return srv, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


async def test_replies_keep_their_order_and_the_half_close_waits():
    srv, channel = await serve()
    try:
        call = pbg.ExternalProcessorStub(channel).Process(iter(messages()))   # sends all, then half-closes
        first = await call.read()
        assert first.WhichOneof("response") == "request_headers"
        for _ in range(50):               # the body and trailers have arrived; the body is held
            await asyncio.sleep(0.01)
        assert Handler.instances and not Handler.instances[0].released
        Handler.instances[0].gate.set()
        rest = [await call.read(), await call.read()]
        assert [r.WhichOneof("response") for r in rest] == ["request_body", "request_trailers"]
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
        assert Handler.instances[0].released
    finally:
        await channel.close()
        await srv.stop(0)


async def test_cancel_while_waiting_closes_the_handler():
    srv, channel = await serve()
    try:
        async def forever():
            for m in messages()[:2]:
                yield m
            await asyncio.Event().wait()
        call = pbg.ExternalProcessorStub(channel).Process(forever())
        assert (await call.read()).WhichOneof("response") == "request_headers"
        while not Handler.instances or srv.active_streams == 0:
            await asyncio.sleep(0.01)
        call.cancel()
        while not Handler.instances[0].released:
            await asyncio.sleep(0.01)
        Handler.instances[0].gate.set()       # the late answer goes nowhere, and nothing breaks
        await asyncio.sleep(0.05)
        assert srv.active_streams == 0
    finally:
        await channel.close()
        await srv.stop(0)
