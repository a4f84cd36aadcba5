"""Model rewrites: weighted targets, and the served name mapped back across any chunking."""
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from epp.requestcontrol.rewrite import ModelNameMapper, Rewrites

from .helpers import director, endpoint, kind, req_body, req_headers, resp_body, resp_headers
from epp.server.stream import RequestStream


def test_rules_exact_first_then_catch_all_and_weights():
    rw = Rewrites([("a", [("a2", 3), ("a3", 1)]), (None, [("z", 1)])], rng=random.Random(1))
    picks = [rw.target("a") for _ in range(4000)]
    assert 2800 < picks.count("a2") < 3200 and picks.count("a2") + picks.count("a3") == 4000
    assert rw.target("other") == "z"
    assert Rewrites().target("a") is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=8), st.booleans())
def test_mapper_is_exact_under_any_chunking(cuts, spaced):
    sep = b'"model": ' if spaced else b'"model":'
    doc = (b'data: {"id":1,' + sep + b'"served-model-x","choices":[]}\n\n') * 3 + b'{"server_model":"served-model-x"}'
    want = doc.replace(sep + b'"served-model-x"', sep + b'"m"')
    m = ModelNameMapper("served-model-x", "m")
    points = sorted({c % (len(doc) + 1) for c in cuts})
    pieces = [doc[a:b] for a, b in zip([0, *points], [*points, len(doc)])]
    out = b"".join(m.feed(piece, i == len(pieces) - 1) for i, piece in enumerate(pieces))
    assert out == want


def test_stream_rewrites_body_and_maps_the_response_back():
    d = director([endpoint(1)])
    d.rewrites.rules = [("m", [("m-v2", 1)])]
    s = RequestStream(d, 1 << 20)
    s.on_message(req_headers())
    out = s.on_message(req_body(b'{"model": "m", "prompt": "x"}'))
    hdrs = {o.header.key: o.header.raw_value for o in out[0].request_headers.response.header_mutation.set_headers}
    body = b"".join(r.request_body.response.body_mutation.streamed_response.body for r in out[1:])
    assert body == b'{"model":"m-v2","prompt":"x"}' and hdrs["content-length"] == str(len(body)).encode()
    (h,) = s.on_message(resp_headers())
    assert "content-length" in h.response_headers.response.header_mutation.remove_headers
    got = []
    for chunk, eos in ((b'{"model":"m', False), (b'-v2","x":1}', True)):
        for r in s.on_message(resp_body(chunk, eos)):
            assert kind(r) == "response_body"
            got.append(r.response_body.response.body_mutation.streamed_response.body)
    assert b"".join(got) == b'{"model":"m","x":1}'
