"""KV events in vLLM's wire format, decoded with plain msgpack and replayed into an index that must equal
the engine's cache as the debug endpoint shows it."""
import asyncio
import json

import msgpack
import zmq
import zmq.asyncio

from testbed.ports import free_port
from testbed.wait import until

from .conftest import TIMEOUT, InProcSim


class Index:
    def __init__(self):
        self.tiers = {"GPU": set(), "CPU": set()}
        self.seqs = []
        self.stored_tokens = {}

    def apply(self, frames):
        topic, seq, payload = frames
        assert len(seq) == 8
        self.seqs.append(int.from_bytes(seq, "big"))
        batch = msgpack.unpackb(payload, raw=False)
        assert isinstance(batch, list) and len(batch) == 3
        ts, events, dp_rank = batch
        assert isinstance(ts, float) and dp_rank == 0
        for ev in events:
            tag = ev[0]
            if tag == "BlockStored":
                _, hashes, parent, token_ids, block_size, lora_id, medium = ev[:7]
                assert block_size == 16 and len(token_ids) == 16 * len(hashes)
                assert parent is None or isinstance(parent, int)
                assert lora_id is None and medium in ("GPU", "CPU")
                for h in hashes:
                    assert isinstance(h, int) and 0 <= h < 2 ** 64
                    self.tiers[medium].add(h)
            elif tag == "BlockRemoved":
                _, hashes, medium = ev
                for h in hashes:
                    self.tiers[medium].discard(h)
            elif tag == "AllBlocksCleared":
                assert ev == ["AllBlocksCleared"]
                for t in self.tiers.values():
                    t.clear()
            else:
                raise AssertionError(f"unknown event {ev!r}")
        return topic


PROBE = b"kv@probe"


async def join(sim, recv, timeout=TIMEOUT):
    """ZMQ's slow joiner, made deterministic: a PUB drops what it sends before the SUB's subscription has
    reached it, so probe through the sim's own PUB socket until a probe arrives; from then on nothing the
    sim publishes is lost. `recv` returns the next probe (an awaitable), whoever reads the socket."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        sim.server.kv_events.pub.send_multipart([PROBE, b"", b""])
        try:
            await asyncio.wait_for(asyncio.shield(recv), 0.05)
            return
        except asyncio.TimeoutError:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("the SUB never joined the sim's PUB")


async def next_event(sub):
    """The next frames that are not a probe (probes sent before the join can still be in flight)."""
    while True:
        frames = await sub.recv_multipart()
        if frames[0] != PROBE:
            return frames


class Reader:
    """Keeps receiving, as a real subscriber does: a ZMQ SUB socket only sends its subscription to a newly
    connected publisher while the application is using the socket."""

    def __init__(self, sub, index):
        self.sub, self.index = sub, index
        self.probed = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._run())

    async def _run(self):
        while True:
            frames = await self.sub.recv_multipart()
            if frames[0] == PROBE:
                if not self.probed.done():
                    self.probed.set_result(None)
                continue
            self.index.apply(frames)

    async def caught_up(self, sim, timeout=TIMEOUT):
        """Wait until every batch the sim has published so far has arrived (event-driven, no quiet period)."""
        pub = sim.server.kv_events

        async def count():
            return len(self.index.seqs)
        await until(count, f"{pub.seq} event batches", timeout, test=lambda n: n >= pub.seq)

    def stop(self):
        self.task.cancel()


async def test_events_replay_into_the_engine_cache_with_offload_and_replay_socket():
    port, replay_port = free_port(), free_port()
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.bind(f"tcp://127.0.0.1:{port}")      # "central" mode: the reader binds, each pod connects
    topic = "kv@127.0.0.1:8000@sim-model"
    cfg = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://127.0.0.1:{port}",
           "replay_endpoint": f"tcp://127.0.0.1:{replay_port}", "topic": topic, "buffer_steps": 1000}
    try:
        async with InProcSim("--time-scale", "100", "--num-gpu-blocks-override", "24", "--kv-offload-blocks", "30",
                             "--kv-events-config", json.dumps(cfg)) as sim:
            index = Index()
            reader = Reader(sub, index)
            await join(sim, reader.probed)
            # enough distinct prompts to overflow 24 GPU blocks into the CPU tier
            for i in range(8):
                prompt = f"customer {i} asks about the invoice and the refund policy " * 6
                st, _ = await sim.post("/v1/completions", {"prompt": prompt, "max_tokens": 20, "ignore_eos": True})
                assert st == 200
            await reader.caught_up(sim)
            _, kv = await sim.get("/debug/kv_cache")
            assert set(kv["tiers"]["GPU"]) == index.tiers["GPU"] and index.tiers["GPU"]
            assert set(kv["tiers"]["CPU"]) == index.tiers["CPU"] and index.tiers["CPU"]
            assert index.seqs == list(range(len(index.seqs)))
            # a prompt whose blocks were offloaded: served from the CPU tier, then back on GPU
            first = "customer 0 asks about the invoice and the refund policy " * 6
            st, r = await sim.post("/v1/completions", {"prompt": first, "max_tokens": 2})
            assert r["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
            await reader.caught_up(sim)
            _, kv = await sim.get("/debug/kv_cache")
            assert set(kv["tiers"]["GPU"]) == index.tiers["GPU"]
            assert set(kv["tiers"]["CPU"]) == index.tiers["CPU"]
            # reset: AllBlocksCleared
            async with sim.http.post(sim.url + "/reset_prefix_cache") as resp:
                assert resp.status == 200
            await reader.caught_up(sim)
            assert index.tiers == {"GPU": set(), "CPU": set()}
            # the replay socket resends buffered batches from a sequence number on
            dealer = ctx.socket(zmq.DEALER)
            dealer.connect(f"tcp://127.0.0.1:{replay_port}")
            await dealer.send_multipart([b"", (3).to_bytes(8, "big")])
            replayed = []
            while True:
                frames = await asyncio.wait_for(dealer.recv_multipart(), TIMEOUT)
                assert frames[0] == b""
                seq = int.from_bytes(frames[1], "big", signed=True)
                if seq == -1:
                    break
                replayed.append(seq)
                msgpack.unpackb(frames[2])
            assert replayed == index.seqs[3:]
            dealer.close(0)
            reader.stop()
    finally:
        sub.close(0)
        ctx.term()


async def test_topic_frame_and_wildcard_bind():
    port = free_port()
    cfg = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{port}", "topic": "kv@t"}
    from vllm_sim.kv_events import _is_wildcard, parse_kv_events_config
    assert _is_wildcard(cfg["endpoint"]) and not _is_wildcard("tcp://127.0.0.1:5557")
    assert parse_kv_events_config(json.dumps({**cfg, "enable_kv_cache_events": False})) is None
    # run with a loopback-bound endpoint (tests bind on 127.0.0.1 only): the sim binds, the reader connects
    cfg["endpoint"] = f"tcp://127.0.0.1:{port}"
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
    try:
        from vllm_sim import kv_events
        orig = kv_events._is_wildcard
        kv_events._is_wildcard = lambda ep: True     # bind mode on a loopback address
        try:
            async with InProcSim("--time-scale", "100", "--kv-events-config", json.dumps(cfg)) as sim:
                sub.connect(f"tcp://127.0.0.1:{port}")
                await join(sim, asyncio.ensure_future(sub.recv_multipart()))
                await sim.post("/v1/completions", {"prompt": "one two three " * 12, "max_tokens": 1})
                frames = await asyncio.wait_for(next_event(sub), TIMEOUT)
                assert frames[0] == b"kv@t" and int.from_bytes(frames[1], "big") == 0
                ev = msgpack.unpackb(frames[2])[1][0]
                assert ev[0] == "BlockStored" and ev[6] == "GPU" and ev[2] is None
        finally:
            kv_events._is_wildcard = orig
    finally:
        sub.close(0)
        ctx.term()


async def test_lora_blocks_carry_lora_id_and_name():
    port = free_port()
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.bind(f"tcp://127.0.0.1:{port}")
    cfg = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://127.0.0.1:{port}"}
    try:
        async with InProcSim("--time-scale", "100", "--enable-lora", "--lora-modules", "sql=/a/sql",
                             "--kv-events-config", json.dumps(cfg)) as sim:
            await join(sim, asyncio.ensure_future(sub.recv_multipart()))
            prompt = "select the rows from the table " * 8
            await sim.post("/v1/completions", {"model": "sql", "prompt": prompt, "max_tokens": 1})
            ev = msgpack.unpackb((await asyncio.wait_for(next_event(sub), TIMEOUT))[2])[1][0]
            assert ev[0] == "BlockStored" and ev[5] == 1 and ev[6] == "GPU" and ev[7] == "sql"
            # the same text on the base model is different content: no hit on the adapter's blocks
            st, r = await sim.post("/v1/completions", {"prompt": prompt, "max_tokens": 1})
            assert r["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    finally:
        sub.close(0)
        ctx.term()


def test_a_comma_list_of_endpoints_publishes_to_each():
    """Ours, for two EPP replicas that each bind their own address: every message reaches both."""
    from vllm_sim.kv_events import KVEventPublisher, KVEventsConfig
    from vllm_sim.engine.kv_cache import Cleared

    async def go():
        ctx = zmq.asyncio.Context()
        ports = [free_port(), free_port()]
        subs = []
        for p in ports:
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.bind(f"tcp://127.0.0.1:{p}")
            subs.append(s)
        pub = KVEventPublisher(KVEventsConfig(endpoint=",".join(f"tcp://127.0.0.1:{p}" for p in ports), topic="kv@x@m"))
        await pub.start()
        try:
            got = [None, None]
            for _ in range(int(TIMEOUT * 10)):          # PUB drops until each connection is up: publish until heard
                pub.publish(0.0, [Cleared()])
                for i, s in enumerate(subs):
                    if got[i] is None and await s.poll(100):
                        got[i] = await s.recv_multipart()
                if all(got):
                    break
            assert all(g is not None and g[0] == b"kv@x@m" for g in got), got
        finally:
            pub.close()
            for s in subs:
                s.close(0)
            ctx.term()
    asyncio.run(go())
