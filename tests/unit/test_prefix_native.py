"""The C prefix-index helpers (epp/kvcache/_prefix.c) against their pure-Python references: the same
keys, the same LRU contents in the same order, after any sequence of operations."""
import random

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.kvcache import prefix_index as pi

native = pi._prefix


def test_the_extension_is_built():
    # setup installs it (hack/setup.sh); without it the request path pays ~50 us more per 16 KB prompt
    assert native is not None, "epp/kvcache/_prefix.c was not compiled: rerun hack/setup.sh and read its output"
    assert pi.block_keys is pi._c_block_keys and pi.LRU is native.LRU


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 2**64 - 1))
def test_xxh64_matches_python_xxhash(data, seed):
    assert native.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.integers(1, 130), st.integers(0, 40), st.text(max_size=12), st.booleans())
def test_block_keys_match_the_python_reference(data, block, max_blocks, seed, partial):
    assert (pi._c_block_keys(seed, data, block, max_blocks, partial)
            == pi.py_block_keys(seed, data, block, max_blocks, partial))


def test_block_keys_accept_any_buffer_and_reject_bad_sizes():
    data = bytes(range(256)) * 4
    assert pi._c_block_keys("m", memoryview(data), 64, 99) == pi.py_block_keys("m", data, 64, 99)
    assert pi._c_block_keys("m", bytearray(data), 64, 99) == pi.py_block_keys("m", data, 64, 99)
    for block, mx in ((0, 4), (-1, 4), (64, -1)):
        with pytest.raises(ValueError):
            native.block_keys(0, data, block, mx)


ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.lists(st.integers(0, 40), max_size=12)),
    st.tuples(st.just("cap"), st.integers(1, 30)),
    st.tuples(st.just("match"), st.lists(st.integers(0, 40), max_size=12)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 25), ops)
def test_lru_behaves_like_the_dict_reference(capacity, program):
    c, py = native.LRU(capacity), pi.DictLRU(capacity)
    for op, arg in program:
        if op == "add":
            keys = list(dict.fromkeys(arg))          # a run names each block once
            c.add_run(keys)
            py.add_run(keys)
        elif op == "cap":
            c.set_capacity(arg)
            py.set_capacity(arg)
        else:
            keys = list(dict.fromkeys(arg))
            assert c.match_run(keys) == py.match_run(keys)
        assert c.keys() == py.keys() and len(c) == len(py) and c.capacity == py.capacity
        assert all((k in c) == (k in py) for k in range(-1, 42))


def test_lru_grows_and_shrinks_at_scale_with_uint64_keys():
    rng = random.Random(7)
    c, py = native.LRU(5000), pi.DictLRU(5000)
    for _ in range(300):
        keys = [rng.getrandbits(64) for _ in range(rng.randint(1, 100))]
        if rng.random() < 0.3 and py.keys():                       # re-add a held run: a touch
            keys = py.keys()[-rng.randint(1, 50):][::-1]
        c.add_run(keys)
        py.add_run(keys)
    assert c.keys() == py.keys() and len(c) == 5000
    c.set_capacity(10)
    py.set_capacity(10)
    assert c.keys() == py.keys()
    assert 2**64 not in c and -5 not in c and "x" not in c
    with pytest.raises(OverflowError):
        c.add_run([2**64])
    with pytest.raises(TypeError):
        c.add_run(["x"])
    with pytest.raises(ValueError):
        native.LRU(0)


def test_prefix_index_gives_the_same_matches_with_either_lru():
    rng = random.Random(3)
    prompts = [bytes(rng.getrandbits(8) for _ in range(64 * rng.randint(1, 20))) for _ in range(30)]
    a, b = pi.PrefixIndex(50), pi.PrefixIndex(50, lru_type=pi.DictLRU)
    for i in range(400):
        keys = pi.block_keys("m", rng.choice(prompts), 64, 256)
        ep = f"ep{rng.randint(0, 3)}"
        if i % 50 == 0:
            a.set_capacity(ep, rng.randint(5, 80))
            b.set_capacity(ep, a._capacity[ep])
        assert a.match(keys) == b.match(keys)
        a.add(ep, keys)
        b.add(ep, keys)
    assert len(a) == len(b)
