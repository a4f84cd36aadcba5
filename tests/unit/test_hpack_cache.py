"""The caching HPACK decoder gives exactly what hpack's Decoder gives, block after block, whatever the
peer's encoder does with the dynamic table (insertions, evictions, size updates, never-indexed)."""
from hpack import Decoder, Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.server.hpack_cache import CachingDecoder

names = st.sampled_from([b":path", b"te", b"content-type", b"x-a", b"x-b", b"grpc-timeout"])
values = st.sampled_from([b"/svc/Process", b"trailers", b"application/grpc", b"1", b"2", b"10S", b"a" * 40])
header = st.tuples(names, values, st.booleans())   # (name, value, sensitive: never indexed)
blocks = st.lists(st.tuples(st.lists(header, min_size=1, max_size=6), st.booleans(),
                            st.sampled_from([None, 0, 64, 200, 4096])), min_size=1, max_size=40)


def _encode(enc: Encoder, headers, huffman: bool) -> bytes:
    from hpack import HeaderTuple, NeverIndexedHeaderTuple
    items = [NeverIndexedHeaderTuple(n, v) if s else HeaderTuple(n, v) for n, v, s in headers]
    return enc.encode(items, huffman=huffman)


@settings(max_examples=200, deadline=None)
@given(blocks, st.integers(0, 3))
def test_same_headers_as_the_plain_decoder(program, repeat):
    enc, plain, cached = Encoder(), Decoder(), CachingDecoder(1 << 16)
    for headers, huffman, table_size in program:
        if table_size is not None:
            enc.header_table_size = table_size
        for _ in range(1 + repeat):   # encoded again: the same bytes once the encoder's table settles
            block = _encode(enc, headers, huffman)
            want = plain.decode(block, raw=True)
            assert cached.decode(block) == (want, sum(32 + len(k) + len(v) for k, v in want))
            assert list(cached.header_table.dynamic_entries) == list(plain.header_table.dynamic_entries)


def test_a_repeated_block_that_leaves_the_table_alone_is_served_from_the_cache():
    enc, cached = Encoder(), CachingDecoder(1 << 16)
    from hpack import NeverIndexedHeaderTuple
    block = enc.encode([(b":method", b"POST"), NeverIndexedHeaderTuple(b":path", b"/svc/Process")])
    first = cached.decode(block)
    assert cached.decode(block) is first and block in cached.cache
    assert cached.decode(bytearray(block)) is first     # a block gathered from CONTINUATION frames
    indexing = enc.encode([(b"x-new", b"v")])        # adds to the dynamic table: never cached, cache emptied
    cached.decode(indexing)
    assert not cached.cache
