"""The directly written body echoes are byte for byte what protobuf encodes, and read like messages."""
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.server import protocol as p
from epp.server.wire import Encoded, streamed_body


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.sampled_from([b"", b"x" * 127, b"x" * 128, b"x" * 16384, b"x" * 70000]),
       st.booleans(), st.booleans())
def test_streamed_body_is_the_protobuf_encoding(body, eos, response_side):
    make = p.response_body_response if response_side else p.request_body_response
    want = make(p.common(streamed=(body, eos))).SerializeToString()
    got = streamed_body(body, eos, response_side)
    assert bytes(got) == want
    assert isinstance(got, Encoded) and got.SerializeToString() is got


def test_an_encoded_reply_reads_like_the_message():
    r = streamed_body(b"abc", True, False)
    assert r.WhichOneof("response") == "request_body"
    sr = r.request_body.response.body_mutation.streamed_response
    assert (sr.body, sr.end_of_stream) == (b"abc", True)


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=1, max_size=40), st.lists(st.tuples(st.sampled_from(["x-a", "content-length", "traceparent"]),
                                                            st.text(max_size=30)), max_size=3),
       st.lists(st.sampled_from(["x-b", "x-c", "x-gateway-destination-endpoint-served"]), max_size=4))
def test_routed_headers_is_the_protobuf_encoding(dest, sets, remove):
    from epp import headers as H
    from epp.server.wire import removes, routed_headers
    want = p.request_headers_response(p.common(p.header_mutation([(H.DEST, dest), *sets], remove),
                                               clear_route_cache=True), p.lb_metadata(dest)).SerializeToString()
    assert bytes(routed_headers(dest, sets, removes(remove))) == want


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**40) | st.sampled_from([0, 127, 128, 16383, 16384, 2**21 - 1, 2**21]))
def test_varints_are_protobufs(n):
    from google.protobuf.internal.encoder import _VarintBytes

    from epp.server.wire import _varint
    assert _varint(n) == _VarintBytes(n)
