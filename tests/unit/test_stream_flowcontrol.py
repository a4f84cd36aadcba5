"""Flow control through request control and the ext_proc state machine, in process: the unsaturated
path stays synchronous, a queued request answers later, a client that leaves takes its request out of
the queue at once, outcomes carry upstream's status and reason header, an eviction is pushed."""
import asyncio
import json

from prometheus_client import CollectorRegistry

from epp import headers as H
from epp.flowcontrol.config import decode
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.metrics import FlowMetrics
from epp.requestcontrol.admission import FlowAdmission
from epp.server.stream import RequestStream

from .flow_helpers import Dial
from .helpers import director, endpoint, kind, req_body, req_headers, resp_body, resp_headers

BODY = json.dumps({"model": "m", "prompt": "hello " * 50}).encode()


def setup(section=None, sat=0.0, objectives=None):
    d = director([endpoint(1), endpoint(2)], objectives=objectives)
    fc = FlowController(decode(section, {}), Dial(sat), d.store.snapshot, FlowMetrics("p", CollectorRegistry()))
    d.admission = FlowAdmission(fc)
    fc.set_desired_priorities(set(d.objectives.values()))
    return d, fc


def send(d, headers=None):
    s = RequestStream(d, 1 << 20)
    assert s.on_message(req_headers(extra=headers)) == []
    return s, s.on_message(req_body(BODY))


def reason(out) -> tuple[int, str | None, bytes]:
    ir = out[0].immediate_response
    hs = {o.header.key: o.header.raw_value.decode() for o in ir.headers.set_headers}
    return ir.status.code, hs.get(H.DROPPED_REASON), ir.body


async def test_unsaturated_requests_are_answered_synchronously():
    d, fc = setup(sat=0.2)
    _, out = send(d)
    assert isinstance(out, list) and [kind(r) for r in out] == ["request_headers", "request_body"]


async def test_a_queued_request_is_answered_when_capacity_frees():
    d, fc = setup(sat=1.0)
    s, out = send(d, {H.FAIRNESS_ID: "tenant"})
    assert not isinstance(out, list)
    task = asyncio.ensure_future(out)
    await asyncio.sleep(0.01)
    assert not task.done() and fc.queued == 1
    assert fc.registry.bands[0].flows["tenant"].live == 1     # the flow is the fairness id header's
    fc.test_dial = fc.detector
    fc.detector.value = 0.5
    fc.kick()
    res = await task
    assert [kind(r) for r in res] == ["request_headers", "request_body"]
    assert d.store.snapshot()[0].in_flight + d.store.snapshot()[1].in_flight == 1


async def test_a_client_leaving_while_queued_leaves_the_queue_at_once():
    d, fc = setup(sat=1.0)
    s, out = send(d)
    task = asyncio.ensure_future(out)
    await asyncio.sleep(0)
    assert fc.queued == 1
    s.close()                          # the transport: the stream was reset
    await asyncio.sleep(0)
    assert fc.queued == 0
    assert await task == []
    assert all(ep.in_flight == 0 for ep in d.store.snapshot())
    assert fc.metrics.requests.labels("EvictedContextCancelled", "0", "p")[0]._value.get() == 1


async def test_outcomes_answer_with_upstreams_status_and_reason():
    d, fc = setup({"defaultRequestTTL": "20ms", "maxRequests": 1}, sat=1.0)
    s1, out1 = send(d)
    _, out2 = send(d)                  # over the global cap: at once
    assert reason(out2)[:2] == (429, "rejected-saturated")
    assert b"inference error: TooManyRequests - request rejected pre-queue: queue at capacity" in reason(out2)[2]
    code, why, body = reason(await out1)
    assert (code, why) == (429, "rejected-ttl-expired")
    assert b"request timed out in queue: request evicted from queue: request TTL expired" in body
    # shutdown
    s3, out3 = send(d)
    task = asyncio.ensure_future(out3)
    await asyncio.sleep(0)
    fc.stop()
    assert reason(await task)[:2] == (503, "rejected-shutting-down")
    assert reason(send(d)[1])[:2] == (503, "rejected-shutting-down")


async def test_no_endpoints_answers_503_with_the_reason():
    d, fc = setup({"noEndpointRequestTTL": "10ms"})
    d.store.replace([])
    _, out = send(d)
    assert reason(await out)[:2] == (503, "rejected-no-endpoints")
    # the legacy path (no flow control) says the same at once
    d.admission = None
    assert reason(send(d)[1])[:2] == (503, "rejected-no-endpoints")


async def test_priority_comes_from_either_objective_header_and_sheddable_requests_queue():
    d, fc = setup({"defaultRequestTTL": "0s"}, sat=1.0, objectives={"batch": -1, "gold": 5})
    assert fc.registry.priorities == [5, 0, -1]
    _, low = send(d, {H.OBJECTIVE_OLD: "batch"})
    _, high = send(d, {H.OBJECTIVE: "gold", H.FAIRNESS_ID_OLD: "acme"})
    assert fc.registry.bands[-1].len == 1 and fc.registry.bands[5].flows["acme"].live == 1
    done = []
    for name, aw in (("low", low), ("high", high)):
        asyncio.ensure_future(aw).add_done_callback(lambda _, n=name: done.append(n))
    fc.detector.value = 0.0
    fc.kick()
    while len(done) < 2:
        await asyncio.sleep(0.001)
    assert done == ["high", "low"]                  # strict priority, though low came first


async def test_an_eviction_is_pushed_on_the_victims_stream():
    d, fc = setup({"enableEviction": True}, objectives={"batch": -1})
    s, out = send(d, {H.OBJECTIVE_OLD: "batch"})
    assert isinstance(out, list)                    # dispatched at once
    pushed = []
    s.push = pushed.extend
    fc.detector.value = 1.0
    _, waiting = send(d)                            # priority 0 waits: band 0 gated, a sheddable in flight
    task = asyncio.ensure_future(waiting)
    await asyncio.sleep(0.001)
    assert [kind(r) for r in pushed] == ["immediate_response"]
    assert reason(pushed) == (429, "evicted", b"request evicted by flow control")
    assert s.closed and s.finished                  # the pick was released (done ran)
    fc.detector.value = 0.0
    fc.kick()
    assert [kind(r) for r in await task] == ["request_headers", "request_body"]
    # a request already answered is not evicted
    s2 = s
    assert s2._revoke(None) is False


async def test_a_stream_that_cannot_push_is_not_evicted():
    d, fc = setup({"enableEviction": True}, objectives={"batch": -1})
    s, out = send(d, {H.OBJECTIVE_OLD: "batch"})
    fc.detector.value = 1.0
    task = asyncio.ensure_future(send(d)[1])
    await asyncio.sleep(0.001)
    assert not s.closed
    s.on_message(resp_headers())
    s.on_message(resp_body(b"{}", eos=True))       # it ends normally
    fc.detector.value = 0.0
    fc.kick()
    await task
