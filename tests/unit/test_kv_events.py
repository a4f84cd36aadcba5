"""Decoding of vLLM KV-event payloads: byte-exact hand-built frames for every layout vLLM has used, malformed
payloads, and round trips through the simulator's encoder and msgspec structs laid out as
vLLM declares them."""
import hashlib
import struct

import msgpack
import msgspec
import pytest

from epp.datalayer.kv_events import (
    AllBlocksCleared, BlockRemoved, BlockStored, EventBatch, KVEventDecodeError, block_hash_key, decode_batch,
    parse_topic)

U64 = (1 << 64) - 1
TOKENS = list(range(100, 132))          # two blocks of 16


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def one(ev, *, dp=0):
    b = decode_batch(pack([1.5, [ev], dp]))
    assert b.unknown == 0 and len(b.events) == 1
    return b.events[0]


# ---- BlockStored layouts ---------------------------------------------------------------------------------
def test_block_stored_4_fields_minimal():
    ev = one(["BlockStored", [1, 2], None, TOKENS, 16])
    assert ev == BlockStored([1, 2], None, TOKENS, 16, None, None, None)


def test_block_stored_5_fields_old_vllm_lora_id():
    ev = one(["BlockStored", [1, 2], 7, TOKENS, 16, None])
    assert (ev.block_hashes, ev.parent_block_hash, ev.token_ids, ev.block_size) == ([1, 2], 7, TOKENS, 16)
    assert ev.lora_id is None and ev.medium is None and ev.lora_name is None
    assert one(["BlockStored", [1], None, TOKENS[:16], 16, 3]).lora_id == 3


def test_block_stored_6_fields_medium():
    ev = one(["BlockStored", [1, 2], None, TOKENS, 16, None, "GPU"])
    assert ev.medium == "GPU" and ev.lora_id is None
    assert one(["BlockStored", [1], None, TOKENS[:16], 16, None, "CPU"]).medium == "CPU"
    assert one(["BlockStored", [1], None, TOKENS[:16], 16, None, None]).medium is None


def test_block_stored_7_fields_lora_name():
    ev = one(["BlockStored", [1, 2], 9, TOKENS, 16, 4, "GPU", "sql-lora"])
    assert ev == BlockStored([1, 2], 9, TOKENS, 16, 4, "GPU", "sql-lora")
    assert one(["BlockStored", [1], None, TOKENS[:16], 16, None, "GPU", None]).lora_name is None


def test_block_stored_newer_trailing_fields_and_unknown_extras():
    extra_keys = [None, [["mm-hash", 0]]]
    ev = one(["BlockStored", [1, 2], None, TOKENS, 16, None, "GPU", None, extra_keys, 1, "sliding_window", 4096,
              "future-field", {"x": 1}, [1, 2, 3]])
    assert ev.block_hashes == [1, 2] and ev.medium == "GPU"
    assert ev.extra_keys == extra_keys and ev.group_idx == 1
    # only some of the newer fields present (omit_defaults drops trailing defaults)
    ev = one(["BlockStored", [1], None, TOKENS[:16], 16, None, "GPU", None, [None]])
    assert ev.extra_keys == [None] and ev.group_idx is None


# ---- hashes ------------------------------------------------------------------------------------------------
def test_int_hashes_full_uint64_range():
    hashes = [0, 1, 2 ** 32, 2 ** 63, U64]
    ev = one(["BlockStored", hashes, U64, TOKENS[:16] * 5, 16, None, "GPU"])
    assert ev.block_hashes == hashes and ev.parent_block_hash == U64


def test_negative_ints_are_their_uint64_twos_complement():
    # msgpack int64 (some encoders write hashes signed)
    raw = pack([1.0, [["BlockStored", [-1, -2 ** 63, -5], -2, TOKENS[:16] * 3, 16, None, "GPU"]], 0])
    assert b"\xd3" in raw      # int64 on the wire
    ev = decode_batch(raw).events[0]
    assert ev.block_hashes == [U64, 2 ** 63, U64 - 4]
    assert ev.parent_block_hash == U64 - 1
    assert one(["BlockRemoved", [-1], "GPU"]).block_hashes == [U64]


def test_bytes_hashes_sha256_last_8_bytes_big_endian():
    digests = [hashlib.sha256(f"block {i}".encode()).digest() for i in range(3)]
    assert all(len(d) == 32 for d in digests)
    want = [struct.unpack(">Q", d[-8:])[0] for d in digests]
    ev = one(["BlockStored", digests[1:], digests[0], TOKENS, 16, None, "GPU"])
    assert ev.block_hashes == want[1:] and ev.parent_block_hash == want[0]
    assert one(["BlockRemoved", digests[1:], "GPU"]).block_hashes == want[1:]
    # the bytes travel as msgpack bin, not str
    assert b"\xc4\x20" + digests[0] in pack(["BlockStored", [digests[0]]])


def test_short_bytes_hash_is_zero_padded_and_key_helper():
    assert block_hash_key(b"\x01\x02") == 0x0102
    assert block_hash_key(bytes(range(8))) == 0x0001020304050607
    assert block_hash_key(-1) == U64 and block_hash_key(5) == 5
    for bad in (b"", 1.5, "abc", None, True, [1]):
        with pytest.raises(KVEventDecodeError):
            block_hash_key(bad)


def test_parent_none_and_mixed_hash_kinds():
    d = hashlib.sha256(b"x").digest()
    ev = one(["BlockStored", [d, 42, -1], None, TOKENS[:16] * 3, 16, None, "GPU"])
    assert ev.parent_block_hash is None
    assert ev.block_hashes == [int.from_bytes(d[-8:], "big"), 42, U64]


# ---- BlockRemoved / AllBlocksCleared -------------------------------------------------------------------------
def test_block_removed_with_and_without_medium():
    assert one(["BlockRemoved", [1, 2]]) == BlockRemoved([1, 2], None)           # vLLM before `medium`
    assert one(["BlockRemoved", [1, 2], "CPU"]) == BlockRemoved([1, 2], "CPU")
    assert one(["BlockRemoved", [3], None]) == BlockRemoved([3], None)
    ev = one(["BlockRemoved", [3], "GPU", 2, "unknown-later-field"])
    assert ev == BlockRemoved([3], "GPU", 2)


def test_all_blocks_cleared():
    assert one(["AllBlocksCleared"]) == AllBlocksCleared()
    assert one(["AllBlocksCleared", "later", 1]) == AllBlocksCleared()


# ---- batches ---------------------------------------------------------------------------------------------
def test_batch_with_dp_rank_byte_exact():
    ev = ["BlockStored", [11, 12], None, TOKENS, 16, None, "GPU"]
    raw = pack([1714000000.25, [ev, ["BlockRemoved", [5], "GPU"], ["AllBlocksCleared"]], 3])
    assert raw[:1] == b"\x93"      # fixarray of 3: [ts, events, dp_rank]
    b = decode_batch(raw)
    assert isinstance(b, EventBatch)
    assert b.ts == 1714000000.25 and b.dp_rank == 3 and b.unknown == 0
    assert b.events == [BlockStored([11, 12], None, TOKENS, 16, None, "GPU"), BlockRemoved([5], "GPU"),
                        AllBlocksCleared()]


def test_batch_without_dp_rank_old_vllm():
    raw = pack([2.0, [["BlockStored", [1], None, TOKENS[:16], 16, None], ["BlockRemoved", [1]]]])
    assert raw[:1] == b"\x92"
    b = decode_batch(raw)
    assert b.dp_rank is None and b.ts == 2.0 and len(b.events) == 2


def test_batch_dp_rank_nil_int_ts_and_extra_trailing_elements():
    b = decode_batch(pack([7, [], None, "later", 1]))
    assert b.ts == 7.0 and isinstance(b.ts, float) and b.dp_rank is None and b.events == []


def test_batch_float32_ts():
    raw = b"\x93" + b"\xca" + struct.pack(">f", 2.5) + b"\x90" + b"\x00"
    b = decode_batch(raw)
    assert (b.ts, b.events, b.dp_rank) == (2.5, [], 0)


def test_map_encoded_events_newer_vllm():
    # vLLM after #42892: events are maps tagged under "type"; keys in any order, unknown ones ignored
    d = hashlib.sha256(b"p").digest()
    ev = {"type": "BlockStored", "block_hashes": [1, -1], "parent_block_hash": d, "token_ids": TOKENS,
          "block_size": 16, "lora_id": None, "medium": "GPU", "lora_name": None, "extra_keys": [None, None],
          "group_idx": 0, "kv_cache_spec_kind": "full_attention", "something_new": [1]}
    rm = {"medium": "CPU", "block_hashes": [1], "type": "BlockRemoved", "group_idx": 0}
    b = decode_batch(pack([3.0, [ev, rm, {"type": "AllBlocksCleared"}], 0]))
    assert b.events[0] == BlockStored([1, U64], int.from_bytes(d[-8:], "big"), TOKENS, 16, None, "GPU", None,
                                      [None, None], 0)
    assert b.events[1] == BlockRemoved([1], "CPU", 0)
    assert b.events[2] == AllBlocksCleared()
    # omit_defaults on a map: optional keys absent
    b = decode_batch(pack([3.0, [{"type": "BlockStored", "block_hashes": [1], "parent_block_hash": None,
                                  "token_ids": TOKENS[:16], "block_size": 16}, {"type": "BlockRemoved",
                                                                                "block_hashes": [1]}]]))
    assert b.events == [BlockStored([1], None, TOKENS[:16], 16), BlockRemoved([1])]


def test_map_encoded_batch():
    b = decode_batch(pack({"ts": 4.0, "events": [["AllBlocksCleared"]], "data_parallel_rank": 1, "new": 0}))
    assert (b.ts, b.events, b.dp_rank) == (4.0, [AllBlocksCleared()], 1)
    b = decode_batch(pack({"ts": 4.0, "events": []}))
    assert b.dp_rank is None


def test_unknown_tags_are_counted_and_skipped():
    b = decode_batch(pack([1.0, [["BlockMoved", [1], "GPU"], ["BlockRemoved", [2], "GPU"],
                                 {"type": "CacheResized", "n": 3}, ["AllBlocksCleared"]], 0]))
    assert b.unknown == 2
    assert b.events == [BlockRemoved([2], "GPU"), AllBlocksCleared()]


# ---- malformed ---------------------------------------------------------------------------------------------
GOOD_EV = ["BlockStored", [1], None, TOKENS[:16], 16, None, "GPU"]


@pytest.mark.parametrize("payload, needle", [
    (b"", "not msgpack"),
    (b"\xc1", "not msgpack"),                                  # reserved byte
    (b"\x93\xcb\x3f", "not msgpack"),                           # truncated
    (pack([1.0, [], 0]) + b"\x01", "not msgpack"),              # trailing data
    (b"\x92\xa2\xff\xfe\x90", "not msgpack"),                   # str that is not UTF-8
    (b"not msgpack at all {", "not msgpack"),
    (pack(5), "array or a map"),
    (pack("ts"), "array or a map"),
    (pack([1.0]), "[ts, events"),
    (pack([]), "[ts, events"),
    (pack(["1.0", [], 0]), "ts must be a number"),
    (pack([None, [], 0]), "ts must be a number"),
    (pack([1.0, {"a": 1}, 0]), "events must be an array"),
    (pack([1.0, [], "0"]), "data_parallel_rank"),
    (pack({"events": []}), "'ts' and 'events'"),
    (pack([1.0, [5], 0]), "event 0: event must be an array or a map"),
    (pack([1.0, [GOOD_EV, []], 0]), "event 1: empty event"),
    (pack([1.0, [[7, [1]]], 0]), "tag must be a string"),
    (pack([1.0, [["BlockStored", [1], None, TOKENS[:16]]], 0]), "at least 4 fields"),
    (pack([1.0, [["BlockStored", 1, None, TOKENS[:16], 16]], 0]), "block_hashes must be an array"),
    (pack([1.0, [["BlockStored", [1.5], None, TOKENS[:16], 16]], 0]), "block hash must be an int or bytes"),
    (pack([1.0, [["BlockStored", [b""], None, TOKENS[:16], 16]], 0]), "empty bytes"),
    (pack([1.0, [["BlockStored", ["abc"], None, TOKENS[:16], 16]], 0]), "block hash"),
    (pack([1.0, [["BlockStored", [1], "p", TOKENS[:16], 16]], 0]), "block hash"),
    (pack([1.0, [["BlockStored", [1], None, "tokens", 16]], 0]), "token_ids must be an array"),
    (pack([1.0, [["BlockStored", [1], None, [1, "a"], 16]], 0]), "token_ids must be uint32"),
    (pack([1.0, [["BlockStored", [1], None, [1, -3], 16]], 0]), "token_ids must be uint32"),
    (pack([1.0, [["BlockStored", [1], None, [1, 2.0], 16]], 0]), "token_ids must be uint32"),
    (pack([1.0, [["BlockStored", [1], None, TOKENS[:16], "16"]], 0]), "block_size"),
    (pack([1.0, [["BlockStored", [1], None, TOKENS[:16], 0]], 0]), "block_size"),
    (pack([1.0, [["BlockStored", [1], None, TOKENS[:16], 16, "lora"]], 0]), "lora_id"),
    (pack([1.0, [["BlockStored", [1], None, TOKENS[:16], 16, None, 1]], 0]), "medium"),
    (pack([1.0, [["BlockStored", [1], None, TOKENS[:16], 16, None, "GPU", 5]], 0]), "lora_name"),
    (pack([1.0, [["BlockStored", [1], None, TOKENS[:16], 16, None, "GPU", None, None, "g"]], 0]), "group_idx"),
    (pack([1.0, [["BlockRemoved"]], 0]), "BlockRemoved without block_hashes"),
    (pack([1.0, [["BlockRemoved", [1], 3]], 0]), "medium"),
    (pack([1.0, [{"type": "BlockStored", "block_hashes": [1], "block_size": 16}], 0]), "without 'token_ids'"),
    (pack([1.0, [{"type": "BlockRemoved"}], 0]), "without 'block_hashes'"),
    (pack([1.0, [{"block_hashes": [1]}], 0]), "string 'type'"),
    (pack([1.0, [{"type": 3}], 0]), "string 'type'"),
])
def test_malformed_payloads_raise_decode_error(payload, needle):
    with pytest.raises(KVEventDecodeError) as err:
        decode_batch(payload)
    assert needle in str(err.value)


def test_decode_error_is_a_value_error():
    assert issubclass(KVEventDecodeError, ValueError)


# ---- topics ------------------------------------------------------------------------------------------------
def test_parse_topic():
    assert parse_topic(b"kv@10.0.0.5:8000@meta-llama/Llama-3.1-8B") == ("10.0.0.5:8000", "meta-llama/Llama-3.1-8B")
    assert parse_topic(b"kv@[fd00::0001]:8000@m") == ("[fd00::1]:8000", "m")
    assert parse_topic(b"kv@fd00::1:8000@m") == ("[fd00::1]:8000", "m")      # unbracketed IPv6 too
    assert parse_topic("kv@10.0.0.5:8000") == ("10.0.0.5:8000", "")
    assert parse_topic(b"kv@10.0.0.5:8000@org/model@rev") == ("10.0.0.5:8000", "org/model@rev")
    assert parse_topic(b"kv@pod-name@m") == (None, "m")
    assert parse_topic(b"") == (None, "")
    assert parse_topic(b"kv@\xff\xfe@m")[0] is None


# ---- the simulator's encoder ------------------------------------------------------------------------------
def test_round_trip_through_the_sims_encoder():
    from vllm_sim.engine.kv_cache import Cleared, Removed, Stored, block_key
    from vllm_sim.kv_events import KVEventPublisher, KVEventsConfig, encode_event

    k0 = block_key(None, TOKENS[:16])
    k1 = block_key(k0, TOKENS[16:])
    lora_k = block_key(None, TOKENS[:16], lora_id=3)
    sim_events = [Stored([k0, k1], None, TOKENS, 16, None, "GPU"), Stored([lora_k], None, TOKENS[:16], 16, 3, "GPU"),
                  Removed([k1], "GPU"), Stored([k1], k0, TOKENS[16:], 16, None, "CPU"), Removed([k1], "CPU"),
                  Cleared()]
    names = {3: "sql-lora"}
    wire = [encode_event(e, names.get) for e in sim_events]
    assert wire[1][-1] == "sql-lora" and len(wire[0]) == 7      # lora_name appended only for LoRA blocks
    b = decode_batch(msgpack.packb([123.5, wire, 2], use_bin_type=True))
    assert (b.ts, b.dp_rank, b.unknown) == (123.5, 2, 0)
    assert b.events == [BlockStored([k0, k1], None, TOKENS, 16, None, "GPU"),
                        BlockStored([lora_k], None, TOKENS[:16], 16, 3, "GPU", "sql-lora"),
                        BlockRemoved([k1], "GPU"), BlockStored([k1], k0, TOKENS[16:], 16, None, "CPU"),
                        BlockRemoved([k1], "CPU"), AllBlocksCleared()]

    # and the exact payload bytes the sim's publisher buffers (and sends) for a step
    pub = KVEventPublisher(KVEventsConfig(endpoint="inproc://kv-events-unit", topic="kv@127.0.0.1:8000@m"), 1)
    try:
        pub.lora_name_of = names.get
        pub.publish(99.0, sim_events)
        seq, payload = pub.buffer[-1]
        assert seq == 0
        got = decode_batch(payload)
        assert got.events == b.events and got.dp_rank == 1 and got.ts == 99.0
    finally:
        pub.close()
        pub.ctx.term()


# ---- msgspec structs laid out as vLLM declares them (msgspec is vLLM's encoder: a test dependency, not ours) --
def _vllm_structs(array_like_events: bool):
    from typing import Any, Optional, Union

    class EventBatch_(msgspec.Struct, array_like=True, omit_defaults=True):
        ts: float
        events: list
        data_parallel_rank: Optional[int] = None

    class Event(msgspec.Struct, array_like=array_like_events, omit_defaults=True, tag=True):
        pass

    class BlockStored_(Event, tag="BlockStored"):
        block_hashes: list[Union[bytes, int]]
        parent_block_hash: Optional[Union[bytes, int]]
        token_ids: list[int]
        block_size: int
        lora_id: Optional[int]
        medium: Optional[str]
        lora_name: Optional[str]
        extra_keys: Optional[list[Optional[tuple[Any, ...]]]] = None
        group_idx: Optional[int] = None
        kv_cache_spec_kind: Optional[str] = None
        kv_cache_spec_sliding_window: Optional[int] = None

    class BlockRemoved_(Event, tag="BlockRemoved"):
        block_hashes: list[Union[bytes, int]]
        medium: Optional[str]
        group_idx: Optional[int] = None

    class AllBlocksCleared_(Event, tag="AllBlocksCleared"):
        pass

    return msgspec, EventBatch_, BlockStored_, BlockRemoved_, AllBlocksCleared_


@pytest.mark.parametrize("array_like_events", [True, False], ids=["positional-events", "map-events"])
def test_msgspec_encoded_like_vllm(array_like_events):
    msgspec, Batch, Stored_, Removed_, Cleared_ = _vllm_structs(array_like_events)
    d = hashlib.sha256(b"blk").digest()
    evs = [Stored_([1, d], None, TOKENS, 16, None, "GPU", None),
           Stored_([2], 1, TOKENS[:16], 16, 5, "GPU", "adapter", [("salt",)], 1, "sliding_window", 1024),
           Removed_([1, d], "GPU"), Removed_([2], "CPU", 1), Cleared_()]
    raw = msgspec.msgpack.Encoder().encode(Batch(1.25, evs, 0))
    b = decode_batch(raw)
    dk = int.from_bytes(d[-8:], "big")
    assert (b.ts, b.dp_rank, b.unknown) == (1.25, 0, 0)
    assert b.events == [BlockStored([1, dk], None, TOKENS, 16, None, "GPU", None),
                        BlockStored([2], 1, TOKENS[:16], 16, 5, "GPU", "adapter", [["salt"]], 1),
                        BlockRemoved([1, dk], "GPU"), BlockRemoved([2], "CPU", 1), AllBlocksCleared()]
    # omit_defaults: no dp rank -> a 2-element batch
    raw = msgspec.msgpack.Encoder().encode(Batch(1.0, [Cleared_()]))
    assert decode_batch(raw).dp_rank is None
