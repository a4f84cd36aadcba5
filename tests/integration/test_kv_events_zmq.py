"""KVEventSubscriber over real ZMQ on 127.0.0.1: central (bind) and pod (connect) modes, sequence gaps closed by
replay or by a reset, removal, and a real `python -m vllm_sim` publishing while it serves completions.

ZMQ's slow joiner is resolved deterministically: a publisher drops what it sends before the subscription has
reached it, so each test either waits for the subscription itself (an XPUB sees it arrive) or sends probes
through the publisher's own socket until one arrives; everything sent after that is delivered in order. Waits
are event-driven with a hang guard only (HANG), never a wall-clock budget.
"""
import asyncio
import json
import os
import sys
import time

import aiohttp
import msgpack
import pytest
import zmq
import zmq.asyncio

from epp.datalayer.kv_events import BlockRemoved, BlockStored, EventBatch, KVEventSubscriber
from testbed.ports import free_port
from testbed.wait import Timeout, until

from .stack import wait_healthy

HANG = 30.0
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENS = list(range(1000, 1016))
PROBE_PAYLOAD = msgpack.packb([0.0, []])


def batch(seq: int) -> bytes:
    """A batch that names its sequence number: ts = seq, one block whose hash is seq + 1."""
    return msgpack.packb([float(seq), [["BlockStored", [seq + 1], None, TOKENS, 16, None, "GPU"]], 0])


def seqb(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


class Sink:
    """Records every call; `until` waits for a condition, woken by each call."""

    def __init__(self):
        self.log: list[tuple] = []
        self._changed = asyncio.Event()

    def apply(self, address: str, model: str, b: EventBatch) -> None:
        assert isinstance(b, EventBatch)
        self.log.append(("apply", address, model, b))
        self._changed.set()

    def reset(self, address: str) -> None:
        self.log.append(("reset", address))
        self._changed.set()

    async def until(self, pred, what: str, timeout: float = HANG):
        try:
            await until(pred, what, timeout, wake=self._changed)
        except Timeout as e:
            raise Timeout(f"{e}; log: {self.log[-5:]}") from None

    # views
    def seqs(self, address: str) -> list[int]:
        return [int(e[3].ts) for e in self.log if e[0] == "apply" and e[1] == address and e[2] != "probe"]

    def models(self, address: str) -> set[str]:
        return {e[2] for e in self.log if e[0] == "apply" and e[1] == address and e[2] != "probe"}

    def resets(self, address: str) -> int:
        return sum(1 for e in self.log if e == ("reset", address))

    def probes(self, address: str) -> int:
        return sum(1 for e in self.log if e[0] == "apply" and e[1] == address and e[2] == "probe")

    def kinds(self, address: str) -> list:
        """('reset',) and seq numbers in the order the sink saw them."""
        out = []
        for e in self.log:
            if e[1] != address:
                continue
            if e[0] == "reset":
                out.append("reset")
            elif e[2] != "probe":
                out.append(int(e[3].ts))
        return out


async def join_by_probe(send_probe, sink: Sink, address: str):
    """Probe through the publisher's own socket until the sink sees a new probe (2-frame, model 'probe': no
    sequence number, so sequence tracking is untouched)."""
    deadline = time.monotonic() + HANG
    before = sink.probes(address)
    while sink.probes(address) == before:
        send_probe()
        try:
            await sink.until(lambda: sink.probes(address) > before, "probe", 0.05)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise AssertionError(f"the SUB never joined the publisher for {address}")


async def join_xpub(xpub):
    """An XPUB receives the subscription message once the SUB's subscription has reached it."""
    msg = await asyncio.wait_for(xpub.recv(), HANG)
    assert msg[:1] == b"\x01", msg


@pytest.fixture
async def zctx():
    ctx = zmq.asyncio.Context()
    yield ctx
    ctx.destroy(0)


# ---- (a) central mode ---------------------------------------------------------------------------------------
async def test_central_bind_mode_several_pods_connect(zctx):
    sink = Sink()
    sub = KVEventSubscriber(sink, bind="tcp://127.0.0.1:0")
    sub.start()
    try:
        ep = sub.bound_endpoint
        assert ep.startswith("tcp://127.0.0.1:") and not ep.endswith(":0")
        topics = {"10.0.0.5:8000": (b"kv@10.0.0.5:8000@llama", "llama"),
                  "[fd00::1]:8000": (b"kv@[fd00:0::0001]:8000@qwen/Qwen3-8B", "qwen/Qwen3-8B"),
                  "10.0.0.6:8000": (b"kv@10.0.0.6:8000@llama", "llama")}
        pubs = {}
        for addr, (topic, _) in topics.items():
            pub = zctx.socket(zmq.PUB)          # a vLLM pod with a non-wildcard endpoint connects
            pub.setsockopt(zmq.LINGER, 0)
            pub.connect(ep)
            pubs[addr] = pub
            probe_topic = topic.rsplit(b"@", 1)[0] + b"@probe"
            await join_by_probe(lambda p=pub, t=probe_topic: p.send_multipart([t, PROBE_PAYLOAD]), sink, addr)
        # interleaved across pods; each pod's own sequence starts wherever it is
        for i in range(5):
            for k, (addr, (topic, _)) in enumerate(topics.items()):
                s = 100 * k + i
                await pubs[addr].send_multipart([topic, seqb(s), batch(s)])
        await sink.until(lambda: all(len(sink.seqs(a)) == 5 for a in topics), "5 batches per pod")
        for k, (addr, (_, model)) in enumerate(topics.items()):
            assert sink.seqs(addr) == [100 * k + i for i in range(5)]
            assert sink.models(addr) == {model}
            assert sub.endpoint_counters(addr)["messages"] >= 5
        ev = next(e[3] for e in sink.log if e[1] == "[fd00::1]:8000" and e[2] != "probe").events[0]
        assert ev == BlockStored([101], None, TOKENS, 16, None, "GPU")
        assert sub.gaps == sub.resets == sub.decode_errors == 0
        assert sorted(sub.endpoints()) == sorted(topics)
        # garbage is counted and dropped, the stream goes on
        pub = pubs["10.0.0.5:8000"]
        await pub.send_multipart([b"kv@10.0.0.5:8000@llama", seqb(5), b"\xc1garbage"])
        await pub.send_multipart([b"kv@not-an-address@llama", seqb(0), batch(0)])
        await pub.send_multipart([b"kv@10.0.0.5:8000@llama", b"\x00\x01", batch(0)])
        await pub.send_multipart([b"kv@10.0.0.5:8000@llama", seqb(6), batch(6)])
        await sink.until(lambda: 6 in sink.seqs("10.0.0.5:8000"), "batch 6")
        assert (sub.decode_errors, sub.bad_topics, sub.bad_frames, sub.gaps) == (1, 1, 1, 0)
        for p in pubs.values():
            p.close(0)
    finally:
        await sub.stop()


# ---- (b) pod mode --------------------------------------------------------------------------------------------
async def test_pod_mode_connects_to_each_pods_publisher(zctx):
    sink = Sink()
    sub = KVEventSubscriber(sink)
    x1, x2 = zctx.socket(zmq.XPUB), zctx.socket(zmq.XPUB)
    for x in (x1, x2):
        x.setsockopt(zmq.LINGER, 0)
        x.bind("tcp://127.0.0.1:0")
    e1, e2 = (x.getsockopt_string(zmq.LAST_ENDPOINT) for x in (x1, x2))
    sub.add_endpoint("127.0.0.1:8001", e1)       # added before start: connected by start()
    sub.start()
    sub.add_endpoint("::1:8002", e2)             # and after
    try:
        await join_xpub(x1)
        await join_xpub(x2)
        for s in range(3):
            await x1.send_multipart([b"kv@127.0.0.1:8001@m1", seqb(s), batch(s)])
            # the pod's own address is authoritative in pod mode; the topic only names the model
            await x2.send_multipart([b"kv@10.9.9.9:1@m2", seqb(10 + s), batch(10 + s)])
        await x1.send_multipart([b"other-topic", seqb(3), batch(3)])      # not "kv@": filtered by ZMQ
        await x1.send_multipart([b"kv@127.0.0.1:8001@m1", seqb(4), batch(4)])
        await sink.until(lambda: len(sink.seqs("127.0.0.1:8001")) == 4 and len(sink.seqs("[::1]:8002")) == 3,
                         "all batches")
        # seq 3 was never delivered (topic filter), so 4 was a gap without replay endpoint: reset, continue
        assert sink.kinds("127.0.0.1:8001") == [0, 1, 2, "reset", 4]
        assert sink.seqs("[::1]:8002") == [10, 11, 12] and sink.models("[::1]:8002") == {"m2"}
        assert "10.9.9.9:1" not in sub.endpoints()
        assert sub.endpoint_counters("127.0.0.1:8001")["gaps"] == 1
        # re-adding the same publisher only updates the replay endpoint: no reset, no reconnect
        sub.add_endpoint("127.0.0.1:8001", e1, "tcp://127.0.0.1:1")
        assert sink.resets("127.0.0.1:8001") == 1
    finally:
        await sub.stop()


# ---- (c) gap closed by replay --------------------------------------------------------------------------------
class DroppingSocket:
    """The sim publisher's PUB socket, losing the messages whose sequence number is in `drop`."""

    def __init__(self, sock, drop):
        self.sock, self.drop = sock, drop

    def send_multipart(self, frames, flags=0):
        if len(frames) == 3 and int.from_bytes(frames[1], "big") in self.drop:
            return
        return self.sock.send_multipart(frames, flags=flags)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def sim_publisher(endpoint: str, topic: str, replay_endpoint: str | None, buffer_steps: int = 100):
    from vllm_sim.kv_events import KVEventPublisher, KVEventsConfig
    return KVEventPublisher(KVEventsConfig(endpoint=endpoint, topic=topic, replay_endpoint=replay_endpoint,
                                           buffer_steps=buffer_steps))


def stored(seq: int):
    from vllm_sim.engine.kv_cache import Stored
    return [Stored([seq + 1], None, TOKENS, 16, None, "GPU")]


async def test_gap_is_replayed_in_order_from_the_pods_replay_socket():
    sink = Sink()
    sub = KVEventSubscriber(sink, bind="tcp://127.0.0.1:0", replay_timeout=HANG)
    sub.start()
    addr = "127.0.0.1:8000"
    replay_ep = f"tcp://127.0.0.1:{free_port()}"
    sub.add_endpoint(addr, None, replay_ep)       # central mode: remember the pod's replay ROUTER
    pub = sim_publisher(sub.bound_endpoint, f"kv@{addr}@sim-model", replay_ep)
    await pub.start()
    try:
        await join_by_probe(lambda: pub.pub.send_multipart([f"kv@{addr}@probe".encode(), PROBE_PAYLOAD]), sink,
                            addr)
        pub.pub = DroppingSocket(pub.pub, drop={2, 3, 4})
        for s in range(8):
            pub.publish(float(s), stored(s))
        await sink.until(lambda: len(sink.seqs(addr)) >= 8, "8 batches")
        assert sink.kinds(addr) == list(range(8))      # in order, nothing twice, no reset
        assert [e[3].events for e in sink.log if e[1] == addr and e[2] != "probe"][3] == \
            [BlockStored([4], None, TOKENS, 16, None, "GPU")]
        assert sink.models(addr) == {"sim-model"}
        c = sub.endpoint_counters(addr)
        assert (c["gaps"], c["replays"], c["replay_failures"], c["resets"]) == (1, 1, 0, 0)
        assert c["replayed"] >= 3          # 2, 3, 4 (and possibly later ones the buffer already held)
    finally:
        pub.close()
        await sub.stop()
        pub.ctx.term()


async def test_replay_that_cannot_close_the_gap_resets_once():
    """The pod's buffer no longer holds the missing batches, then a replay endpoint that never answers."""
    sink = Sink()
    sub = KVEventSubscriber(sink, bind="tcp://127.0.0.1:0", replay_timeout=0.2)
    sub.start()
    addr = "127.0.0.1:8000"
    replay_ep = f"tcp://127.0.0.1:{free_port()}"
    sub.add_endpoint(addr, None, replay_ep)
    pub = sim_publisher(sub.bound_endpoint, f"kv@{addr}@m", replay_ep, buffer_steps=2)
    await pub.start()
    try:
        await join_by_probe(lambda: pub.pub.send_multipart([f"kv@{addr}@probe".encode(), PROBE_PAYLOAD]), sink,
                            addr)
        pub.pub = DroppingSocket(pub.pub, drop={1, 2, 3})
        for s in range(6):
            pub.publish(float(s), stored(s))
        await sink.until(lambda: 5 in sink.seqs(addr), "batch 5")
        # seq 4 arrived with 1..3 lost; the ROUTER holds only 3 and 4 -> the gap cannot be closed
        assert sink.kinds(addr) == [0, "reset", 4, 5]
        c = sub.endpoint_counters(addr)
        assert (c["gaps"], c["replays"], c["replay_failures"], c["resets"]) == (1, 1, 1, 1)

        # a replay endpoint nobody serves: the replay times out (replay_timeout), one reset, go on
        pub.close()
        pub.ctx.term()
        sub.add_endpoint(addr, None, f"tcp://127.0.0.1:{free_port()}")
        pub = sim_publisher(sub.bound_endpoint, f"kv@{addr}@m", None)
        await pub.start()
        pub.seq = 100                                   # continues the sequence (same publisher, new socket)
        await join_by_probe(lambda: pub.pub.send_multipart([f"kv@{addr}@probe".encode(), PROBE_PAYLOAD]), sink,
                            addr)
        for s in (100, 101):
            pub.publish(float(s), stored(s))
        await sink.until(lambda: 101 in sink.seqs(addr), "batch 101")
        assert sink.kinds(addr) == [0, "reset", 4, 5, "reset", 100, 101]
        assert sub.endpoint_counters(addr)["replay_failures"] == 2
    finally:
        pub.close()
        await sub.stop()
        pub.ctx.term()


async def counter_reaches(sub, address: str, name: str, n: int):
    deadline = time.monotonic() + HANG
    while (sub.endpoint_counters(address) or {}).get(name, 0) < n:
        assert time.monotonic() < deadline, f"{name} of {address} never reached {n}"
        await asyncio.sleep(0.005)


async def test_pod_mode_replay_from_a_router_and_held_messages_overflowing(zctx):
    """A tiny ROUTER speaking vLLM's replay protocol, answering only when the test says so; meanwhile live
    messages are held, and more than max_pending of them means the replay cannot be trusted: reset."""
    sink = Sink()
    sub = KVEventSubscriber(sink, replay_timeout=HANG, max_pending=2)
    xpub, router = zctx.socket(zmq.XPUB), zctx.socket(zmq.ROUTER)
    for sock in (xpub, router):
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind("tcp://127.0.0.1:0")
    a, topic = "127.0.0.1:8001", b"kv@127.0.0.1:8001@m"
    sub.add_endpoint(a, xpub.getsockopt_string(zmq.LAST_ENDPOINT), router.getsockopt_string(zmq.LAST_ENDPOINT))
    sub.start()

    async def request(expect_start: int) -> bytes:
        ident, empty, start = await asyncio.wait_for(router.recv_multipart(), HANG)
        assert empty == b"" and int.from_bytes(start, "big") == expect_start
        return ident

    async def answer(ident, seqs):
        for s in seqs:
            await router.send_multipart([ident, b"", seqb(s), batch(s)])
        await router.send_multipart([ident, b"", (-1).to_bytes(8, "big", signed=True), b""])

    try:
        await join_xpub(xpub)
        for s in (0, 1, 4):
            await xpub.send_multipart([topic, seqb(s), batch(s)])
        ident = await request(2)
        await counter_reaches(sub, a, "messages", 3)
        # first: a replay that closes the gap, with one live message held meanwhile
        await xpub.send_multipart([topic, seqb(5), batch(5)])
        await counter_reaches(sub, a, "messages", 4)
        await answer(ident, [1, 2, 3, 4])          # 1 was applied already: skipped
        await sink.until(lambda: 5 in sink.seqs(a), "batch 5")
        assert sink.kinds(a) == [0, 1, 2, 3, 4, 5]
        # then: a gap whose replay waits while more live messages arrive than max_pending holds
        await xpub.send_multipart([topic, seqb(8), batch(8)])
        ident = await request(6)
        for s in (9, 10, 11):
            await xpub.send_multipart([topic, seqb(s), batch(s)])
        await counter_reaches(sub, a, "messages", 8)
        await answer(ident, [6, 7, 8, 9, 10, 11])
        await sink.until(lambda: "reset" in sink.kinds(a), "reset")
        await xpub.send_multipart([topic, seqb(12), batch(12)])
        await sink.until(lambda: 12 in sink.seqs(a), "batch 12")
        assert sink.kinds(a)[:6] == [0, 1, 2, 3, 4, 5]
        assert sink.kinds(a)[-2:] == ["reset", 12] and sink.resets(a) == 1
        c = sub.endpoint_counters(a)
        assert (c["gaps"], c["replays"], c["replay_failures"], c["resets"]) == (2, 2, 1, 1)
    finally:
        await sub.stop()


async def test_a_failing_sink_does_not_stop_the_stream(zctx):
    class FlakySink(Sink):
        def apply(self, address, model, b):
            if b.ts == 1.0:
                raise RuntimeError("index full")
            super().apply(address, model, b)

    sink = FlakySink()
    sub = KVEventSubscriber(sink)
    xpub = zctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    xpub.bind("tcp://127.0.0.1:0")
    sub.add_endpoint("127.0.0.1:8001", xpub.getsockopt_string(zmq.LAST_ENDPOINT))
    sub.start()
    try:
        await join_xpub(xpub)
        for s in range(3):
            await xpub.send_multipart([b"kv@127.0.0.1:8001@m", seqb(s), batch(s)])
        await sink.until(lambda: 2 in sink.seqs("127.0.0.1:8001"), "batch 2")
        assert sink.kinds("127.0.0.1:8001") == [0, 2]
        assert (sub.sink_errors, sub.gaps, sub.resets) == (1, 0, 0)
    finally:
        await sub.stop()


# ---- (d) gap without replay, duplicates, publisher restart ------------------------------------------------------
async def test_gap_without_replay_resets_once_and_continues(zctx):
    sink = Sink()
    sub = KVEventSubscriber(sink, bind="tcp://127.0.0.1:0")
    sub.start()
    addr, topic = "127.0.0.1:8000", b"kv@127.0.0.1:8000@m"
    pub = zctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(sub.bound_endpoint)
    try:
        await join_by_probe(lambda: pub.send_multipart([b"kv@127.0.0.1:8000@probe", PROBE_PAYLOAD]), sink, addr)
        for s in (5, 6, 9, 10, 11):
            await pub.send_multipart([topic, seqb(s), batch(s)])
        await sink.until(lambda: 11 in sink.seqs(addr), "batch 11")
        assert sink.kinds(addr) == [5, 6, "reset", 9, 10, 11]       # first message is the baseline
        # a batch sent again is ignored; the 2-frame form has no sequence and is applied as it comes
        await pub.send_multipart([topic, seqb(11), batch(11)])
        await pub.send_multipart([topic, batch(50)])
        await pub.send_multipart([topic, seqb(12), batch(12)])
        await sink.until(lambda: 12 in sink.seqs(addr), "batch 12")
        assert sink.kinds(addr) == [5, 6, "reset", 9, 10, 11, 50, 12]
        # the sequence going back means a new publisher (vLLM restarted, empty cache): reset, new baseline
        await pub.send_multipart([topic, seqb(0), batch(0)])
        await pub.send_multipart([topic, seqb(1), batch(1)])
        await sink.until(lambda: 1 in sink.seqs(addr), "batch 1")
        assert sink.kinds(addr) == [5, 6, "reset", 9, 10, 11, 50, 12, "reset", 0, 1]
        c = sub.endpoint_counters(addr)
        assert (c["gaps"], c["duplicates"], c["restarts"], c["resets"], c["replays"]) == (1, 1, 1, 2, 0)
        assert (sub.gaps, sub.duplicates, sub.restarts, sub.resets) == (1, 1, 1, 2)
    finally:
        await sub.stop()


# ---- (e) remove_endpoint ---------------------------------------------------------------------------------------
async def test_remove_endpoint_resets_and_nothing_more_arrives(zctx):
    sink = Sink()
    sub = KVEventSubscriber(sink)
    sub.start()
    x1, x2 = zctx.socket(zmq.XPUB), zctx.socket(zmq.XPUB)
    for x in (x1, x2):
        x.setsockopt(zmq.LINGER, 0)
        x.bind("tcp://127.0.0.1:0")
    a1, a2 = "127.0.0.1:8001", "127.0.0.1:8002"
    sub.add_endpoint(a1, x1.getsockopt_string(zmq.LAST_ENDPOINT))
    sub.add_endpoint(a2, x2.getsockopt_string(zmq.LAST_ENDPOINT))
    try:
        await join_xpub(x1)
        await join_xpub(x2)
        for s in range(3):
            await x1.send_multipart([b"kv@127.0.0.1:8001@m", seqb(s), batch(s)])
            await x2.send_multipart([b"kv@127.0.0.1:8002@m", seqb(s), batch(s)])
        await sink.until(lambda: len(sink.seqs(a1)) == 3 and len(sink.seqs(a2)) == 3, "3 batches each")
        # in flight when the endpoint goes: never applied
        await x1.send_multipart([b"kv@127.0.0.1:8001@m", seqb(3), batch(3)])
        sub.remove_endpoint(a1)
        assert sink.log[-1] == ("reset", a1) and sink.resets(a1) == 1
        assert a1 not in sub.endpoints() and sub.endpoint_counters(a1) is None
        # the pod's publisher sees our subscription go: from here on nothing it sends can reach us
        assert await asyncio.wait_for(x1.recv(), HANG) == b"\x00kv@"
        for s in range(4, 8):
            await x1.send_multipart([b"kv@127.0.0.1:8001@m", seqb(s), batch(s)])
        for s in range(3, 6):
            await x2.send_multipart([b"kv@127.0.0.1:8002@m", seqb(s), batch(s)])
        await sink.until(lambda: len(sink.seqs(a2)) == 6, "the other pod goes on")
        assert sink.seqs(a1) == [0, 1, 2] and sink.resets(a1) == 1
        assert sink.seqs(a2) == list(range(6)) and sink.resets(a2) == 0
        # removing again (or an unknown endpoint) only resets
        sub.remove_endpoint(a1)
        assert sink.resets(a1) == 2
    finally:
        await sub.stop()


# ---- (f) a real vllm_sim process ----------------------------------------------------------------------------------
def block_chain_ok(ev: BlockStored) -> bool:
    from vllm_sim.engine.kv_cache import block_key
    parent = ev.parent_block_hash
    for i, h in enumerate(ev.block_hashes):
        if h != block_key(parent, ev.token_ids[i * 16:(i + 1) * 16]):
            return False
        parent = h
    return True


class Index:
    """What a scorer would hold: GPU-tier keys per endpoint, and each key's token ids."""

    def __init__(self, sink: Sink):
        self.sink = sink
        self.gpu: set[int] = set()
        self.tokens: dict[int, list[int]] = {}
        self.stored: list[BlockStored] = []

    def apply(self, address, model, b):
        for ev in b.events:
            if isinstance(ev, BlockStored):
                self.stored.append(ev)
                for i, h in enumerate(ev.block_hashes):
                    self.gpu.add(h)
                    self.tokens[h] = ev.token_ids[i * ev.block_size:(i + 1) * ev.block_size]
            elif isinstance(ev, BlockRemoved):
                self.gpu.difference_update(ev.block_hashes)
            else:
                self.gpu.clear()
        self.sink.apply(address, model, b)

    def reset(self, address):
        self.gpu.clear()
        self.sink.reset(address)


async def test_real_vllm_sim_process_publishes_events_that_arrive():
    from vllm_sim.engine.kv_cache import block_key
    sink = Sink()
    index = Index(sink)
    sub = KVEventSubscriber(index, bind=f"tcp://127.0.0.1:{free_port()}")
    sub.start()
    port, replay_port = free_port(), free_port()
    addr = f"127.0.0.1:{port}"
    sub.add_endpoint(addr, None, f"tcp://127.0.0.1:{replay_port}")
    cfg = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": sub.bound_endpoint,
           "replay_endpoint": f"tcp://127.0.0.1:{replay_port}", "topic": f"kv@{addr}@sim-model"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vllm_sim", "--port", str(port), "--time-scale", "100", "--max-model-len", "4096",
        "--kv-events-config", json.dumps(cfg), cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, url, proc, HANG)

            async def complete(prompt):
                async with http.post(url + "/v1/completions",
                                     json={"prompt": prompt, "max_tokens": 2, "ignore_eos": True}) as r:
                    assert r.status == 200, await r.text()

            async def tokenize(prompt):
                async with http.post(url + "/tokenize", json={"prompt": prompt}) as r:
                    return (await r.json())["tokens"]

            # slow joiner: the sim's PUB connects to us; serve distinct prompts until its first event arrives
            i, deadline = 0, time.monotonic() + HANG
            while not sink.seqs(addr):
                await complete(f"warm up request number {i} " * 8)
                i += 1
                try:
                    await sink.until(lambda: bool(sink.seqs(addr)), "first event", 0.1)
                except TimeoutError:
                    assert time.monotonic() < deadline, "no event from the sim"

            shared = "You are a helpful assistant for the billing team. Answer briefly and precisely. " * 6
            prompts = [shared + f"Customer {n} asks about invoice {n * 7} and the refund policy. " * 4
                       for n in range(3)]
            want: dict[int, list[int]] = {}
            for p in prompts:
                await complete(p)
                toks = await tokenize(p)
                parent = None
                for b in range(len(toks) // 16):
                    parent = block_key(parent, toks[b * 16:(b + 1) * 16])
                    want[parent] = toks[b * 16:(b + 1) * 16]
            assert len(want) >= 10
            await sink.until(lambda: set(want) <= set(index.tokens), "every full prompt block stored")
            for h, toks in want.items():
                assert index.tokens[h] == toks          # token ids as tokenized, hash as the engine keys them
            for ev in index.stored:
                assert ev.block_size == 16 and len(ev.token_ids) == 16 * len(ev.block_hashes)
                assert ev.medium == "GPU" and ev.lora_id is None
                assert all(0 <= h < 2 ** 64 for h in ev.block_hashes)
                assert block_chain_ok(ev)
            # the shared prefix's blocks were stored once, then reused (not announced again)
            first_block = next(iter(want))
            assert sum(first_block in ev.block_hashes for ev in index.stored) == 1

            async def engine_gpu():
                async with http.get(url + "/debug/kv_cache") as r:
                    return set((await r.json())["tiers"]["GPU"])
            deadline = time.monotonic() + HANG
            while (gpu := await engine_gpu()) != index.gpu:      # caught up: the index is the engine's cache
                assert time.monotonic() < deadline, (len(gpu), len(index.gpu))
                await asyncio.sleep(0.01)
            c = sub.endpoint_counters(addr)
            assert c["decode_errors"] == c["gaps"] == c["resets"] == 0 and c["messages"] >= 4
            assert sink.models(addr) == {"sim-model"}
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await sub.stop()
