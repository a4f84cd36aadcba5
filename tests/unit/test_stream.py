"""The ext_proc state machine, driven message by message; asserts the exact replies."""
import json

import orjson
import pytest

from epp import headers as H
from epp.server import protocol as p
from epp.server.stream import RequestStream

from .helpers import director, endpoint, kind, req_body, req_headers, resp_body, resp_headers, set_headers

BODY = json.dumps({"model": "m", "prompt": "hello " * 50}).encode()


def stream(eps=None, **kw):
    return RequestStream(director(eps or [endpoint(1), endpoint(2, waiting=10, kv=0.9)], **kw), max_body=1 << 24)


def routed(r, want="10.0.0.1:8000"):
    c = getattr(r, kind(r)).response
    hs = set_headers(c)
    assert hs[H.DEST] == want
    assert c.clear_route_cache
    assert set(c.header_mutation.remove_headers) == {*H.ROUTING[1:], *H.CONTROL}   # a client never steers routing
    assert r.dynamic_metadata.fields[H.LB_NS].struct_value.fields[H.DEST].string_value == want
    return hs


def test_full_duplex_holds_headers_until_body_end_then_reemits_body():
    s = stream()
    assert s.on_message(req_headers()) == []
    assert s.on_message(req_body(BODY[:100], eos=False)) == []
    out = s.on_message(req_body(BODY[100:], eos=True))
    assert [kind(r) for r in out] == ["request_headers", "request_body"]
    routed(out[0])
    sr = out[1].request_body.response.body_mutation.streamed_response
    assert (sr.body, sr.end_of_stream) == (BODY, True)
    # the answer flows back chunk by chunk, each echoed at once
    assert kind(s.on_message(resp_headers(ctype="text/event-stream"))[0]) == "response_headers"
    for i, eos in ((1, False), (2, True)):
        chunk = b'data: {"i": %d}\n\n' % i
        out = s.on_message(resp_body(chunk, eos=eos))
        assert len(out) == 1
        sr = out[0].response_body.response.body_mutation.streamed_response
        assert (sr.body, sr.end_of_stream) == (chunk, eos)


def test_picks_the_idle_endpoint_and_records_in_flight():
    d = director([endpoint(1, waiting=50, kv=0.9), endpoint(2)])
    s = RequestStream(d, 1 << 20)
    s.on_message(req_headers())
    out = s.on_message(req_body(BODY))
    routed(out[0], "10.0.0.2:8000")
    ep2 = d.store.get("10.0.0.2:8000")
    assert ep2.in_flight == 1
    s.close()
    assert ep2.in_flight == 0


@pytest.mark.parametrize("size,chunks", [(0, 1), (1, 1), (62_000, 1), (62_001, 2), (1 << 20, 17)])
def test_reemitted_chunks_are_at_most_62000_bytes(size, chunks):
    body = b"x" * size
    out = p.streamed_chunks(body, True)
    assert len(out) == chunks
    parts = [r.request_body.response.body_mutation.streamed_response for r in out]
    assert all(len(sr.body) <= p.MAX_CHUNK for sr in parts)
    assert b"".join(sr.body for sr in parts) == body
    assert [sr.end_of_stream for sr in parts] == [False] * (chunks - 1) + [True]


def test_large_body_in_many_messages_comes_back_whole():
    prompt = "\u00e9\u65e5" * (1 << 19)
    body = json.dumps({"model": "m", "prompt": prompt}, ensure_ascii=False).encode()
    s = stream()
    s.on_message(req_headers())
    pieces = [body[i:i + 16384] for i in range(0, len(body), 16384)]
    for piece in pieces[:-1]:
        assert s.on_message(req_body(piece, eos=False)) == []
    out = s.on_message(req_body(pieces[-1], eos=True))
    assert kind(out[0]) == "request_headers"
    got = b"".join(r.request_body.response.body_mutation.streamed_response.body for r in out[1:])
    assert got == body
    assert all(len(r.request_body.response.body_mutation.streamed_response.body) <= 62_000 for r in out[1:])


def test_buffered_mode():
    s = stream()
    out = s.on_message(req_headers(mode=p.BUFFERED, resp_mode=p.NONE))
    assert [kind(r) for r in out] == ["request_headers"]
    c = out[0].request_headers.response
    assert set(c.header_mutation.remove_headers) == set(H.ROUTING + H.CONTROL)
    assert not c.header_mutation.set_headers
    out = s.on_message(req_body(BODY, eos=True))
    assert [kind(r) for r in out] == ["request_body"]
    routed(out[0])
    assert not out[0].request_body.response.HasField("body_mutation")  # body untouched
    # response body mode NONE: the headers end the accounting
    assert kind(s.on_message(resp_headers())[0]) == "response_headers"
    assert s.finished


def test_streamed_mode_with_early_body_answers_every_chunk_after_the_headers():
    s = stream()
    assert s.on_message(req_headers(mode=p.STREAMED, early=True)) == []
    assert s.on_message(req_body(BODY[:10], eos=False)) == []
    out = s.on_message(req_body(BODY[10:], eos=True))
    assert [kind(r) for r in out] == ["request_headers", "request_body", "request_body"]
    routed(out[0])
    assert not any(r.request_body.response.HasField("body_mutation") for r in out[1:])
    # response side in STREAMED mode: plain CONTINUE per chunk
    s.on_message(resp_headers())
    r = s.on_message(resp_body(b'{"usage": {"prompt_tokens": 3}}', eos=True))
    assert kind(r[0]) == "response_body" and not r[0].response_body.response.HasField("body_mutation")


def test_streamed_mode_without_early_body_picks_at_headers_and_still_checks_the_body():
    s = stream()
    out = s.on_message(req_headers(mode=p.STREAMED))
    assert [kind(r) for r in out] == ["request_headers"]
    routed(out[0])
    assert [kind(r) for r in s.on_message(req_body(b"{not", eos=False))] == ["request_body"]
    out = s.on_message(req_body(b" json", eos=True))
    assert kind(out[0]) == "immediate_response"
    assert out[0].immediate_response.status.code == 400
    s.close()
    assert s.control.store.get("10.0.0.1:8000").in_flight == 0


def test_header_only_request_is_routed_at_once():
    s = stream()
    out = s.on_message(req_headers(path="/v1/models", method="GET", eos=True))
    assert [kind(r) for r in out] == ["request_headers"]
    routed(out[0])


def test_post_to_api_path_without_body_is_400():
    out = stream().on_message(req_headers(eos=True))
    assert out[0].immediate_response.status.code == 400
    assert b"empty" in out[0].immediate_response.body


@pytest.mark.parametrize("path,body,status,fragment", [
    ("/v1/completions", b"{not json", 400, b"not valid JSON"),
    ("/v1/completions", b'{"prompt": "x"}', 400, b"'model' is required"),
    ("/v1/audio/speech", b'{"model": "m", "input": "x"}', 400, b"no parser registered matching path suffix"),
])
def test_bad_input_is_an_immediate_response_with_a_json_reason(path, body, status, fragment):
    for mode in (p.FULL_DUPLEX, p.BUFFERED):
        s = stream()
        s.on_message(req_headers(path=path, mode=mode))
        out = s.on_message(req_body(body))
        assert [kind(r) for r in out] == ["immediate_response"]
        ir = out[0].immediate_response
        assert ir.status.code == status
        err = orjson.loads(ir.body)["error"]
        assert fragment.decode() in err["message"] and err["code"] == status
        assert s.closed and s.on_message(resp_headers()) == []


def test_no_endpoints_is_503():
    s = RequestStream(director([]), 1 << 20)
    s.on_message(req_headers())
    out = s.on_message(req_body(BODY))
    assert out[0].immediate_response.status.code == 503


def test_body_over_the_limit_is_413():
    s = RequestStream(director([endpoint(1)]), max_body=1000)
    s.on_message(req_headers())
    out = s.on_message(req_body(b"x" * 1001, eos=False))
    assert out[0].immediate_response.status.code == 413


def test_subset_hint_list_string_and_bare_ip():
    eps = [endpoint(1), endpoint(2), endpoint(3)]
    for subset, want in ((["10.0.0.3:8000"], "10.0.0.3:8000"), ("10.0.0.2:8000, 10.0.0.9:1", "10.0.0.2:8000"),
                         (["10.0.0.1"], "10.0.0.1:8000")):
        s = RequestStream(director(eps), 1 << 20)
        s.on_message(req_headers(subset=subset))
        routed(s.on_message(req_body(BODY))[0], want)
    for subset in ([], ["10.9.9.9:8000"]):
        s = RequestStream(director(eps), 1 << 20)
        s.on_message(req_headers(subset=subset))
        assert s.on_message(req_body(BODY))[0].immediate_response.status.code == 503


def test_client_routing_headers_are_overwritten_or_removed():
    s = stream()
    s.on_message(req_headers(extra={H.DEST: "1.2.3.4:1", H.PREFILLER: "1.2.3.4:2"}))
    out = s.on_message(req_body(BODY))
    hs = routed(out[0])
    assert H.PREFILLER not in hs


def test_fallbacks_are_an_ordered_comma_list():
    eps = [endpoint(1, waiting=5), endpoint(2), endpoint(3, waiting=10, kv=0.5)]
    s = RequestStream(director(eps, max_endpoints=3), 1 << 20)
    s.on_message(req_headers())
    routed(s.on_message(req_body(BODY))[0], "10.0.0.2:8000,10.0.0.1:8000,10.0.0.3:8000")


def test_trailers_end_the_body_in_full_duplex():
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    s = stream()
    s.on_message(req_headers())
    s.on_message(req_body(BODY, eos=False))
    out = s.on_message(pb.ProcessingRequest(request_trailers=pb.HttpTrailers()))
    assert [kind(r) for r in out] == ["request_headers", "request_body", "request_trailers"]
    assert out[1].request_body.response.body_mutation.streamed_response.end_of_stream is False


def test_usage_is_counted_from_sse_and_json_answers():
    d = director([endpoint(1)])
    s = RequestStream(d, 1 << 20)
    s.on_message(req_headers())
    s.on_message(req_body(BODY))
    s.on_message(resp_headers(ctype="text/event-stream"))
    s.on_message(resp_body(b'data: {"choices": []}\n\ndata: {"choices": [], "usa'))
    s.on_message(resp_body(b'ge": {"prompt_tokens": 7, "completion_tokens": 3, '
                           b'"prompt_tokens_details": {"cached_tokens": 5}}}\n\ndata: [DONE]\n\n', eos=True))
    reg = d.metrics.registry
    assert reg.get_sample_value("inference_objective_input_tokens_sum", {"model_name": "m", "target_model_name": "m"}) == 7
    assert reg.get_sample_value("inference_objective_output_tokens_sum", {"model_name": "m", "target_model_name": "m"}) == 3
    assert reg.get_sample_value("inference_objective_prompt_cached_tokens_sum", {"model_name": "m", "target_model_name": "m"}) == 5
    assert reg.get_sample_value("inference_objective_request_total",
                                {"model_name": "m", "target_model_name": "m", "priority": "0"}) == 1
    assert reg.get_sample_value("llm_d_epp_request_total", {"model_name": "m", "target_model_name": "m",
                                                            "fairness_id": "default-flow", "priority": "0"}) == 1
    assert reg.get_sample_value("llm_d_epp_request_input_tokens_sum", {"model_name": "m", "target_model_name": "m",
                                                                       "fairness_id": "default-flow", "priority": "0"}) == 7
    assert reg.get_sample_value("inference_objective_running_requests", {"model_name": "m"}) == 0


def test_cancelled_stream_frees_its_state():
    d = director([endpoint(1)])
    s = RequestStream(d, 1 << 20)
    s.on_message(req_headers())
    s.on_message(req_body(BODY))
    s.on_message(resp_headers(ctype="text/event-stream"))
    s.on_message(resp_body(b"data: {}\n\n"))
    s.close()  # the client went away mid-answer
    assert d.store.get("10.0.0.1:8000").in_flight == 0
    assert s.decision is None and s.chunks == [] and s.usage is None
    assert d.metrics.registry.get_sample_value("inference_objective_running_requests", {"model_name": "m"}) == 0


def test_sheddable_request_is_429_when_saturated():
    eps = [endpoint(1, waiting=20, kv=0.95)]
    s = RequestStream(director(eps, objectives={"batch": -1}), 1 << 20)
    s.on_message(req_headers(extra={"x-gateway-inference-objective": "batch"}))
    out = s.on_message(req_body(BODY))
    assert out[0].immediate_response.status.code == 429
    s = RequestStream(director(eps, objectives={"batch": -1}), 1 << 20)
    s.on_message(req_headers())  # no objective: priority 0, not sheddable
    assert kind(s.on_message(req_body(BODY))[0]) == "request_headers"


def test_stale_endpoints_are_dropped_unless_all_are_stale():
    s = RequestStream(director([endpoint(1, fresh=False), endpoint(2, waiting=30, kv=0.9)]), 1 << 20)
    s.on_message(req_headers())
    routed(s.on_message(req_body(BODY))[0], "10.0.0.2:8000")
    s = RequestStream(director([endpoint(1, fresh=False)]), 1 << 20)
    s.on_message(req_headers())
    routed(s.on_message(req_body(BODY))[0], "10.0.0.1:8000")


def test_decision_header_explains_scores():
    s = RequestStream(director([endpoint(1), endpoint(2, waiting=4)], explain=True), 1 << 20)
    s.on_message(req_headers())
    s.on_message(req_body(BODY))
    out = s.on_message(resp_headers())
    explained = orjson.loads(set_headers(out[0].response_headers.response)[H.DECISION])
    assert explained["pick"] == ["10.0.0.1:8000"]
    scores = explained["profiles"]["default"]["scores"]
    assert scores["10.0.0.1:8000"]["queue-scorer"] == 1.0 and scores["10.0.0.2:8000"]["queue-scorer"] == 0.0


def test_internal_error_is_a_500_not_a_dead_stream(monkeypatch):
    d = director([endpoint(1)])
    monkeypatch.setattr(d.scheduler, "schedule", lambda *a, **k: 1 / 0)
    s = RequestStream(d, 1 << 20)
    s.on_message(req_headers())
    assert s.on_message(req_body(BODY))[0].immediate_response.status.code == 500


@pytest.mark.parametrize("mode", [p.FULL_DUPLEX, p.BUFFERED])
def test_changed_body_gets_a_matching_content_length(mode):
    d = director([endpoint(1)])
    real = d.decide
    new = json.dumps({"model": "rewritten-\u00e9", "prompt": "x" * 70_000}, ensure_ascii=False).encode()

    def rewriting(*a, **k):
        dec = real(*a, **k)
        dec.body = new
        return dec
    d.decide = rewriting
    s = RequestStream(d, 1 << 20)
    s.on_message(req_headers(mode=mode))
    out = s.on_message(req_body(BODY))
    c = getattr(out[0], kind(out[0])).response
    assert set_headers(c)["content-length"] == str(len(new))
    if mode == p.FULL_DUPLEX:
        assert b"".join(r.request_body.response.body_mutation.streamed_response.body for r in out[1:]) == new
        assert len(out) == 3  # 70 KB: two chunks
    else:
        assert c.body_mutation.body == new


def test_every_response_says_it_went_through_the_response_headers_step_as_upstream():
    s = stream()
    s.on_message(req_headers())
    s.on_message(req_body(b'{"model": "m", "prompt": "hi"}'))
    out = s.on_message(resp_headers())
    assert set_headers(out[0].response_headers.response)[H.WENT_INTO_RESP_HEADERS] == "true"
    undecided = stream()          # no decision (e.g. the stream started mid-way): the header still comes
    assert set_headers(undecided.on_message(resp_headers())[0].response_headers.response) == {
        H.WENT_INTO_RESP_HEADERS: "true"}


def test_client_sent_sidecar_hints_are_removed():
    s = stream()
    s.on_message(req_headers(extra={H.KV_CACHE_SOURCE: "6.6.6.6:1", H.DATA_PARALLEL: "6.6.6.6:2"}))
    out = s.on_message(req_body(b'{"model": "m", "prompt": "hi"}'))
    c = out[0].request_headers.response
    assert {H.KV_CACHE_SOURCE, H.DATA_PARALLEL} <= set(c.header_mutation.remove_headers)
    assert H.KV_CACHE_SOURCE not in set_headers(c) and H.DATA_PARALLEL not in set_headers(c)
