"""The prepare step: a plugin that needs I/O before scheduling makes the stream answer later, in
order, with the same replies it would have given at once; errors and a client leaving meanwhile are
accounted for."""
import asyncio
import json

from epp import headers as H
from epp.scheduling.framework import Plugin, PrepareRequest
from epp.server import protocol as p
from epp.server.stream import RequestStream

from .helpers import director, endpoint, kind, req_body, req_headers, set_headers

BODY = json.dumps({"model": "m", "prompt": "hello " * 50}).encode()


class Preparer(Plugin, PrepareRequest):
    """Holds each request until released; what it saw is kept."""
    type_name = "test-preparer"

    def __init__(self, fail: bool = False, immediate: bool = False) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.fail, self.immediate = fail, immediate
        self.seen = []

    def prepare(self, request):
        self.seen.append(request.request_id)
        if self.immediate:
            return None
        return self._wait()

    async def _wait(self):
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("boom")


def setup(prep, mode=p.FULL_DUPLEX):
    d = director([endpoint(1), endpoint(2, waiting=10, kv=0.9)], extra_plugins=[prep])
    return d, RequestStream(d, 1 << 20)


async def test_full_duplex_answer_waits_for_the_prepare_step():
    prep = Preparer()
    d, s = setup(prep)
    assert s.on_message(req_headers()) == []
    pending = s.on_message(req_body(BODY))
    assert not isinstance(pending, list) and prep.seen
    task = asyncio.ensure_future(pending)
    await asyncio.sleep(0)
    assert not task.done() and s.waiting
    prep.gate.set()
    out = await task
    assert [kind(r) for r in out] == ["request_headers", "request_body"]
    assert set_headers(out[0].request_headers.response)[H.DEST] == "10.0.0.1:8000"
    assert out[1].request_body.response.body_mutation.streamed_response.body == BODY
    assert d.store.snapshot()[0].in_flight == 1 and not s.waiting


async def test_a_preparer_that_returns_nothing_keeps_the_answer_synchronous():
    prep = Preparer(immediate=True)
    _, s = setup(prep)
    s.on_message(req_headers())
    out = s.on_message(req_body(BODY))
    assert isinstance(out, list) and kind(out[0]) == "request_headers" and prep.seen


async def test_a_failing_preparer_still_routes():
    prep = Preparer(fail=True)
    prep.gate.set()
    _, s = setup(prep)
    s.on_message(req_headers())
    out = await s.on_message(req_body(BODY))
    assert set_headers(out[0].request_headers.response)[H.DEST] == "10.0.0.1:8000"


async def test_buffered_with_trailers_answers_body_then_trailers():
    prep = Preparer()
    prep.gate.set()
    _, s = setup(prep)
    s.on_message(req_headers(mode=p.BUFFERED))
    s.on_message(req_body(BODY, eos=False))
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    out = await s.on_message(pb.ProcessingRequest(request_trailers=pb.HttpTrailers()))
    assert [kind(r) for r in out] == ["request_body", "request_trailers"]


async def test_bad_body_is_rejected_before_waiting():
    prep = Preparer()
    _, s = setup(prep)
    s.on_message(req_headers())
    out = s.on_message(req_body(b"{not json"))
    assert isinstance(out, list) and kind(out[0]) == "immediate_response"
    assert out[0].immediate_response.status.code == 400 and not prep.seen


async def held():
    """A request whose decision waits on the preparer's gate."""
    prep = Preparer()
    d, s = setup(prep)
    s.on_message(req_headers())
    task = asyncio.ensure_future(s.on_message(req_body(BODY)))
    await asyncio.sleep(0)
    return prep, d, s, task


async def test_client_leaving_while_waiting_releases_the_pick():
    prep, d, s, task = await held()
    s.close()                      # the transport closes the stream: nothing may leak
    prep.gate.set()
    assert await task == []
    assert all(ep.in_flight == 0 for ep in d.store.snapshot())
    assert s.finished


async def test_no_endpoint_after_waiting_is_a_clean_error():
    prep, d, s, task = await held()
    d.store.replace([])
    prep.gate.set()
    out = await task
    assert kind(out[0]) == "immediate_response" and out[0].immediate_response.status.code == 503
