"""epp-sidecar's request flow, every branch, against fake prefill and decode servers on loopback."""
from __future__ import annotations

import asyncio
import json
import tempfile
from contextlib import asynccontextmanager

import aiohttp
import orjson
import pytest
from aiohttp import web
from yarl import URL

from epp.sidecar.allowlist import Allowlist
from epp.sidecar.options import Config
from epp.sidecar.proxy import FORBIDDEN, PREFILL_KV, prefill_body
from epp.sidecar.server import SidecarServer, server_ssl_context
from testbed.endpoints import write_endpoints
from testbed.ports import free_port, free_range
from testbed.wait import until

HANG = 60.0     # bounds a hang only; nothing here waits on the clock


class Fake:
    """A model server stand-in: `behave(request, body)` answers; every request is recorded, and a
    handler cut off by its client sets `cancelled`."""

    def __init__(self, behave=None, ssl_context=None, port=0):
        self.behave = behave or (lambda req, body: web.json_response({"ok": True}))
        self.ssl_context = ssl_context
        self.port = port
        self.seen: list[dict] = []
        self.arrived = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append({"method": request.method, "path": request.raw_path, "headers": request.headers,
                          "raw": raw, "json": _try_json(raw)})
        self.arrived.set()
        try:
            out = self.behave(request, self.seen[-1])
            return await out if asyncio.iscoroutine(out) else out
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def __aenter__(self):
        app = web.Application(client_max_size=1 << 24)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc):
        self.release.set()
        await self.runner.cleanup()


def _try_json(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


KVP = {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": [3, 1, 2],
       "remote_engine_id": "engine-p", "remote_host": "10.0.0.9", "remote_port": 5600, "tp_size": 1,
       "remote_request_id": "r-1", "extra": {"nested": [1.5, None, "x"], "big": 2 ** 70}}


def prefill_ok(cached=7):
    return lambda req, body: web.Response(content_type="application/json", body=json.dumps({
        "id": "cmpl-p", "choices": [{"text": "x", "finish_reason": "length"}], "kv_transfer_params": KVP,
        "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101,
                  "prompt_tokens_details": {"cached_tokens": cached}}}).encode())


def decode_json(req, body):
    return web.json_response({"id": "cmpl-d", "choices": [{"text": "hello world", "finish_reason": "length"}],
                              "usage": {"prompt_tokens": 100, "completion_tokens": 2, "total_tokens": 102,
                                        "prompt_tokens_details": {"cached_tokens": 99}}})


def status(code, doc=None):
    return lambda req, body: web.json_response(doc or {"error": {"message": f"status {code}"}}, status=code)


@asynccontextmanager
async def sidecar(decode: Fake, tmp_path=None, members=(), **cfg):
    kw = dict(port=0, model_server_port=decode.port if decode else 1, bind_address="127.0.0.1",
              endpoints_poll_interval=0.02, secure_proxy=False)
    if members:
        path = tmp_path / "endpoints.yaml"
        write_endpoints(path, members)
        kw.update(enable_ssrf_protection=True, endpoints_file=str(path))
    kw.update(cfg)
    server = SidecarServer(Config(**kw))
    await server.start()
    server.url = f"http://127.0.0.1:{server.ports[0]}"
    try:
        async with aiohttp.ClientSession() as client:
            server.client = client
            yield server
    finally:
        await server.stop()


BODY = {"model": "m", "prompt": "a long prompt " * 20, "max_tokens": 30, "temperature": 0.5,
        "stream": False, "seed": 3}


async def post(sc, body=BODY, target=None, path="/v1/completions", headers=None, raw=None):
    h = {"Content-Type": "application/json", **(headers or {})}
    if target:
        h["x-prefiller-host-port"] = target
    async with sc.client.post(sc.url + path, data=raw if raw is not None else orjson.dumps(body), headers=h) as r:
        return r.status, await r.read(), r.headers


# ---- the P/D flow -------------------------------------------------------------------------------

async def test_prefill_then_decode(tmp_path):
    async with Fake(prefill_ok()) as p, Fake(decode_json) as d, sidecar(d, tmp_path, [p.address]) as sc:
        code, raw, _ = await post(sc, target=p.address, headers={"x-request-id": "client-id", "X-Custom": "kept"})
        assert code == 200
        # prefill leg: stream off, stream_options gone, one token, do_remote_decode; the rest as sent
        leg = p.seen[0]["json"]
        assert leg == {**BODY, "stream": False, "max_tokens": 1, "max_completion_tokens": 1,
                       "kv_transfer_params": PREFILL_KV}
        assert p.seen[0]["path"] == "/v1/completions"
        # decode leg: the original body plus the prefill answer's kv_transfer_params, verbatim
        assert json.loads(d.seen[0]["raw"]) == {**BODY, "kv_transfer_params": KVP}
        # one request id, the same on both legs and not the client's; the routing header is gone
        for leg in (p.seen[0], d.seen[0]):
            assert len(leg["headers"].getall("x-request-id")) == 1
            assert "x-prefiller-host-port" not in leg["headers"] and leg["headers"]["X-Custom"] == "kept"
        rid = p.seen[0]["headers"]["x-request-id"]
        assert rid == d.seen[0]["headers"]["x-request-id"] != "client-id"
        # usage reports what the prefill leg said
        doc = orjson.loads(raw)
        assert doc["usage"]["prompt_tokens_details"]["cached_tokens"] == 7
        assert doc["choices"][0]["text"] == "hello world" and doc["usage"]["completion_tokens"] == 2
        assert sc.stats["prefill_decode"] == 1


async def test_prefill_body_per_api():
    chat = {"messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": True}, "min_tokens": 5, "max_completion_tokens": 9}
    leg = prefill_body(chat, "chat_completions")
    assert leg == {"messages": chat["messages"], "stream": False, "min_tokens": 1, "max_tokens": 1,
                   "max_completion_tokens": 1, "kv_transfer_params": PREFILL_KV}
    assert chat["stream"] is True and chat["min_tokens"] == 5         # the original is untouched
    resp = prefill_body({"input": "hi", "max_output_tokens": 50}, "responses")
    assert resp["max_output_tokens"] == 1 and "max_tokens" not in resp
    gen = {"token_ids": [1, 2], "sampling_params": {"max_tokens": 40, "min_tokens": 3, "temperature": 0}}
    g = prefill_body(gen, "generate")
    assert g["sampling_params"] == {"max_tokens": 1, "min_tokens": 1, "temperature": 0}
    assert gen["sampling_params"]["max_tokens"] == 40
    assert prefill_body({"token_ids": [1]}, "generate")["sampling_params"] == {"max_tokens": 1}


async def test_streamed_decode_passes_chunk_by_chunk_and_rewrites_usage(tmp_path):
    first_seen = asyncio.Event()
    lines = [b'data: {"choices":[{"text":"he"}],"usage":null}\n\n',
             b'data: {"choices":[{"text":"llo"}],"usage":{"prompt_tokens":100,"completion_tokens":2,'
             b'"prompt_tokens_details":{"cached_tokens":99}}}\n\n',
             b'data: {"choices":[],"usage":{"prompt_tokens":100,"completion_tokens":2,"prompt_tokens_details":null}}'
             b'\n\n', b"data: [DONE]\n\n"]

    async def stream(req, body):
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(req)
        await out.write(lines[0])
        await first_seen.wait()         # the client has the first chunk before the rest exists
        rest = b"".join(lines[1:])
        for i in range(0, len(rest), 37):   # usage lines split across chunks
            await out.write(rest[i:i + 37])
        await out.write_eof()
        return out

    body = {**BODY, "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    async with Fake(prefill_ok(cached=0)) as p, Fake(stream) as d, sidecar(d, tmp_path, [p.address]) as sc:
        h = {"Content-Type": "application/json", "x-prefiller-host-port": p.address}
        async with sc.client.post(sc.url + "/v1/completions", data=orjson.dumps(body), headers=h) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            first = await r.content.readuntil(b"\n\n")
            assert first == lines[0]
            first_seen.set()
            rest = await r.read()
        assert "stream_options" not in p.seen[0]["json"] and p.seen[0]["json"]["stream"] is False
        assert d.seen[0]["json"]["stream"] is True and d.seen[0]["json"]["stream_options"] == body["stream_options"]
        events = [e for e in (first + rest).split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        usages = [orjson.loads(e[6:])["usage"] for e in events[:-1]]
        assert usages[0] is None
        assert [u["prompt_tokens_details"]["cached_tokens"] for u in usages[1:]] == [0, 0]
        assert usages[1]["completion_tokens"] == 2


async def test_prefill_4xx_goes_to_the_client(tmp_path):
    err = {"object": "error", "message": "maximum context length is 512", "type": "BadRequestError", "code": 400}
    async with Fake(status(400, err)) as p, Fake(decode_json) as d, sidecar(d, tmp_path, [p.address]) as sc:
        code, raw, headers = await post(sc, target=p.address)
        assert code == 400 and orjson.loads(raw) == err and headers["Content-Type"].startswith("application/json")
        assert d.seen == [] and sc.stats["prefill_rejected"] == 1


@pytest.mark.parametrize("case", ["500", "503", "unreachable", "timeout", "not-json"])
async def test_prefill_failure_decodes_alone(tmp_path, case):
    behave = {"500": status(500), "503": status(503), "timeout": None, "unreachable": None,
              "not-json": lambda req, body: web.Response(text="<html>oops</html>")}[case]
    async with Fake(behave) as p, Fake(decode_json) as d:
        if case == "timeout":
            async def hang(req, body):
                await p.release.wait()
            p.behave = hang
        target = "127.0.0.1:1" if case == "unreachable" else p.address
        async with sidecar(d, tmp_path, [target], prefill_timeout=0.2 if case == "timeout" else 300) as sc:
            raw_body = orjson.dumps(BODY) + b"  "        # decode alone sends the original bytes
            code, raw, _ = await post(sc, target=target, raw=raw_body)
            assert code == 200
            assert d.seen[0]["raw"] == raw_body and "kv_transfer_params" not in d.seen[0]["json"]
            assert orjson.loads(raw)["usage"]["prompt_tokens_details"]["cached_tokens"] == 99   # not rewritten
            assert sc.stats["prefill_fallback"] == 1
            if case == "timeout":
                await asyncio.wait_for(p.cancelled.wait(), HANG)     # the timed-out prefill leg was cut


async def test_prefill_retries_transient_5xx(tmp_path):
    answers = [status(503), status(502), prefill_ok()]
    async with Fake(lambda req, body: answers[len(p.seen) - 1](req, body)) as p, Fake(decode_json) as d, \
            sidecar(d, tmp_path, [p.address], prefill_max_retries=2, prefill_retry_backoff=0.0) as sc:
        code, _, _ = await post(sc, target=p.address)
        assert code == 200 and len(p.seen) == 3 and sc.stats["prefill_decode"] == 1
        assert len({leg["headers"]["x-request-id"] for leg in p.seen + d.seen}) == 1
        # a 500 is not transient: no retry, decode alone
        answers[:] = [status(500)] * 5
        p.seen.clear()
        code, _, _ = await post(sc, target=p.address)
        assert code == 200 and len(p.seen) == 1 and sc.stats["prefill_fallback"] == 1


async def test_ssrf_protection(tmp_path):
    async with Fake(prefill_ok()) as p, Fake(prefill_ok()) as other, Fake(decode_json) as d, \
            sidecar(d, tmp_path, [p.address]) as sc:
        for target in (other.address, "localhost:%d" % p.port, "169.254.169.254:80", "127.0.0.1", "[::1]:80"):
            code, raw, _ = await post(sc, target=target)
            assert code == 403 and raw.decode() == FORBIDDEN, target
        assert other.seen == [] and d.seen == [] and p.seen == []
        assert sc.stats["ssrf_denied"] == 5
        code, _, _ = await post(sc, target=f"http://{p.address}")       # upstream tolerates the scheme
        assert code == 200 and len(p.seen) == 1
        # the pool changes while running: the new member is allowed, the removed one refused
        write_endpoints(tmp_path / "endpoints.yaml", [other.address])
        await until(lambda: sc.allowlist.allowed(other.address), "the endpoints file reloaded")
        assert (await post(sc, target=other.address))[0] == 200
        assert (await post(sc, target=p.address))[0] == 403


async def test_ssrf_off_allows_any_target(tmp_path):
    async with Fake(prefill_ok()) as p, Fake(decode_json) as d, sidecar(d) as sc:
        assert (await post(sc, target=p.address))[0] == 200 and len(p.seen) == 1


async def test_endpoints_file_may_appear_later(tmp_path):
    async with Fake(prefill_ok()) as p, Fake(decode_json) as d:
        path = tmp_path / "later.yaml"
        async with sidecar(d, enable_ssrf_protection=True, endpoints_file=str(path)) as sc:
            assert (await post(sc, target=p.address))[0] == 403
            write_endpoints(path, [p.address])
            await until(lambda: sc.allowlist.allowed(p.address), "the endpoints file to appear")
            assert (await post(sc, target=p.address))[0] == 200


async def test_prefiller_choice(tmp_path):
    async with Fake(prefill_ok()) as a, Fake(prefill_ok()) as b, Fake(decode_json) as d:
        async with sidecar(d, tmp_path, [a.address, b.address]) as sc:
            await post(sc, target=f" {a.address} , {b.address}")
            assert len(a.seen) == 1 and b.seen == []                    # the first entry
        async with sidecar(d, tmp_path, [a.address, b.address], enable_prefiller_sampling=True) as sc:
            for proxy_sampler in _samplers(sc):
                proxy_sampler(lambda n: n - 1)
            await post(sc, target=f"{a.address},{b.address}")
            assert len(b.seen) == 1                                     # sampled
            h = {"Content-Type": "application/json"}
            async with sc.client.post(sc.url + "/v1/completions", data=orjson.dumps(BODY),
                                      headers=[*h.items(), ("x-prefiller-host-port", a.address),
                                               ("x-prefiller-host-port", b.address)]) as r:
                assert r.status == 200
            assert len(b.seen) == 2                                     # several header values: the same


def _samplers(sc):
    """The sampler of each listener's proxy (tests pick the 'random' index)."""
    out = []
    for runner in sc.runners:
        for route in runner.app.router.routes():
            proxy = getattr(route.handler, "__self__", None)
            if proxy is not None and hasattr(proxy, "sampler"):
                out.append(lambda f, proxy=proxy: setattr(proxy, "sampler", f))
                break
    return out


async def test_bad_bodies(tmp_path):
    async with Fake(prefill_ok()) as p, Fake(decode_json) as d, sidecar(d, tmp_path, [p.address]) as sc:
        for raw in (b"{not json", b"[1, 2]"):
            code, body, _ = await post(sc, target=p.address, raw=raw)
            doc = orjson.loads(body)
            assert code == 400 and doc["object"] == "error" and doc["type"] == "BadRequestError"
        assert p.seen == [] and d.seen == []
    async with Fake(prefill_ok()) as p, Fake(decode_json) as d, \
            sidecar(d, tmp_path, [p.address], max_request_body_bytes=1000) as sc:
        assert (await post(sc, target=p.address, body={"prompt": "x" * 2000}))[0] == 413
        assert p.seen == [] and d.seen == []


async def test_without_prefiller_header_decode_alone_unchanged(tmp_path):
    async with Fake(decode_json) as d, sidecar(d) as sc:
        raw = orjson.dumps({**BODY, "kv_transfer_params": {"a": 1}})
        code, body, _ = await post(sc, raw=raw, headers={"x-request-id": "mine"})
        assert code == 200 and d.seen[0]["raw"] == raw and d.seen[0]["headers"]["x-request-id"] == "mine"
        assert orjson.loads(body)["usage"]["prompt_tokens_details"]["cached_tokens"] == 99
        code, _, _ = await post(sc, raw=raw, target=" ")                 # an empty header is no target
        assert code == 200 and "x-prefiller-host-port" not in d.seen[1]["headers"]
        assert sc.stats["decode_only"] == 2


# ---- everything else ----------------------------------------------------------------------------

async def test_other_paths_are_proxied(tmp_path):
    def echo(req, body):
        return web.Response(status=201, body=b"echo:" + body["raw"], headers={"X-Upstream": "yes",
                                                                             "Content-Type": "text/plain"})
    async with Fake(echo) as d, sidecar(d) as sc:
        cases = [("GET", "/v1/models", None), ("POST", "/tokenize?x=1&y=%2F", b'{"prompt": "hi"}'),
                 ("PUT", "/some/thing", b"payload"), ("DELETE", "/v1/x", None), ("GET", "/v1/completions", None),
                 ("POST", "/health", b"{}"), ("GET", "/metrics", None), ("POST", "/v1/completions/", b"{}")]
        for method, path, data in cases:
            async with sc.client.request(method, URL(sc.url + path, encoded=True), data=data,
                                         headers={"X-Client": "c", "Connection": "keep-alive, X-Hop", "X-Hop": "h",
                                                  "x-prefiller-host-port": "10.0.0.1:1"}) as r:
                assert r.status == 201 and r.headers["X-Upstream"] == "yes"
                assert await r.read() == b"echo:" + (data or b"")
            seen = d.seen[-1]
            assert (seen["method"], seen["path"], seen["raw"]) == (method, path, data or b"")
            assert seen["headers"]["X-Client"] == "c" and "X-Hop" not in seen["headers"]
            assert "x-prefiller-host-port" not in seen["headers"]
        assert sc.stats["proxied"] == len(cases)


async def test_health_does_not_touch_the_model_server():
    async with sidecar(None) as sc:
        async with sc.client.get(sc.url + "/health") as r:
            assert r.status == 200


async def test_model_server_down():
    async with sidecar(None) as sc:
        for path in ("/v1/completions", "/v1/models"):
            async with sc.client.post(sc.url + path, json=BODY) as r:
                doc = await r.json()
                assert r.status == 503 and doc["type"] == "ServiceUnavailable" and doc["code"] == 503


async def test_large_proxied_body_is_streamed(tmp_path):
    async with Fake(lambda req, body: web.Response(body=b"%d" % len(body["raw"]))) as d, sidecar(d) as sc:
        blob = b"x" * (3 << 20)
        async with sc.client.post(sc.url + "/v1/audio/transcriptions", data=blob) as r:
            assert await r.read() == b"%d" % len(blob)
        assert d.seen[0]["headers"]["Content-Length"] == str(len(blob))


# ---- the client goes away -----------------------------------------------------------------------

async def test_client_leaving_during_prefill_cuts_the_prefill_leg(tmp_path):
    async with Fake() as p, Fake(decode_json) as d:
        async def hang(req, body):
            await p.release.wait()
        p.behave = hang
        async with sidecar(d, tmp_path, [p.address]) as sc:
            task = asyncio.create_task(post(sc, target=p.address))
            await asyncio.wait_for(p.arrived.wait(), HANG)
            task.cancel()                       # the client disconnects
            await asyncio.wait_for(p.cancelled.wait(), HANG)
            await until(lambda: sc.stats["client_disconnects"] == 1, "the sidecar to see the disconnect")
            assert d.seen == []


async def test_client_leaving_mid_stream_cuts_the_decode_leg(tmp_path):
    async def stream(req, body):
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(req)
        await out.write(b'data: {"choices":[{"text":"a"}]}\n\n')
        await d.release.wait()
        return out
    async with Fake(prefill_ok()) as p, Fake(stream) as d, sidecar(d, tmp_path, [p.address]) as sc:
        client = aiohttp.ClientSession()
        r = await client.post(sc.url + "/v1/completions", data=orjson.dumps({**BODY, "stream": True}),
                              headers={"x-prefiller-host-port": p.address})
        assert (await r.content.readuntil(b"\n\n")).startswith(b"data:")
        r.close()
        await client.close()
        await asyncio.wait_for(d.cancelled.wait(), HANG)
        await until(lambda: sc.stats["client_disconnects"] == 1, "the sidecar to see the disconnect")
        assert len(p.seen) == 1


async def test_model_server_breaking_off_breaks_the_client_stream(tmp_path):
    async def stream(req, body):
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(req)
        await out.write(b'data: {"choices":[{"text":"a"}]}\n\n')
        req.transport.close()
        return out
    async def short_json(req, body):
        out = web.StreamResponse(headers={"Content-Type": "application/json"})
        out.content_length = 1000
        await out.prepare(req)
        await out.write(b'{"usage": {')
        req.transport.close()
        return out
    async with Fake(stream) as d, Fake(prefill_ok()) as p, sidecar(d, tmp_path, [p.address]) as sc:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with sc.client.post(sc.url + "/v1/completions", json={**BODY, "stream": True}) as r:
                await r.read()
        d.behave = short_json          # a P/D answer is read whole (to rewrite it): a broken one is a 502
        code, raw, _ = await post(sc, target=p.address)
        assert code == 502 and orjson.loads(raw)["type"] == "BadGateway"


# ---- TLS, data parallel, metrics ----------------------------------------------------------------

async def test_tls_listener_and_tls_legs(tmp_path):
    ctx = server_ssl_context(None)
    async with Fake(prefill_ok(), ssl_context=ctx) as p, Fake(decode_json, ssl_context=ctx) as d, \
            sidecar(d, tmp_path, [p.address], secure_proxy=True, tls_stages=frozenset({"prefiller", "decoder"}),
                    insecure_stages=frozenset({"prefiller", "decoder"})) as sc:
        sc.url = sc.url.replace("http://", "https://")
        async with sc.client.post(sc.url + "/v1/completions", json=BODY, ssl=False,
                                  headers={"x-prefiller-host-port": p.address}) as r:
            assert r.status == 200 and (await r.json())["usage"]["prompt_tokens_details"]["cached_tokens"] == 7
        assert len(p.seen) == 1 and len(d.seen) == 1
    # verification stays on unless skipped: a self-signed prefiller fails the leg (decode alone)
    async with Fake(prefill_ok(), ssl_context=ctx) as p, Fake(decode_json) as d, \
            sidecar(d, tmp_path, [p.address], tls_stages=frozenset({"prefiller"})) as sc:
        assert (await post(sc, target=p.address))[0] == 200 and p.seen == [] and sc.stats["prefill_fallback"] == 1


async def test_secure_proxy_serves_the_cert_path_and_its_renewal(tmp_path, monkeypatch):
    import ssl
    from epp.sidecar import server as server_mod
    monkeypatch.setattr(server_mod, "CERT_RELOAD_INTERVAL", 0.01)
    certs = tmp_path / "certs"
    certs.mkdir()

    def issue():
        with tempfile.TemporaryDirectory() as d:
            crt, key = server_mod._self_signed_files(d)
            (certs / "tls.crt").write_bytes(open(crt, "rb").read())
            (certs / "tls.key").write_bytes(open(key, "rb").read())
        return ssl.PEM_cert_to_DER_cert((certs / "tls.crt").read_text())

    async def served(sc):
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        _, writer = await asyncio.open_connection("127.0.0.1", sc.ports[0], ssl=ctx)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return der
    first = issue()
    async with sidecar(None, secure_proxy=True, cert_path=str(certs)) as sc:
        assert await served(sc) == first
        second = issue()

        async def renewed():
            return await served(sc) == second
        await until(renewed, "the renewed certificate")


async def test_data_parallel_ranks():
    base, ms = free_range(2), free_range(2)
    async with Fake(lambda req, body: web.Response(text="rank0"), port=ms) as d0, \
            Fake(lambda req, body: web.Response(text="rank1"), port=ms + 1), \
            sidecar(d0, port=base, data_parallel_size=2) as sc:
        assert sc.ports == [base, base + 1]
        for rank, want in ((0, b"rank0"), (1, b"rank1")):
            async with sc.client.get(f"http://127.0.0.1:{base + rank}/v1/models") as r:
                assert await r.read() == want


async def test_metrics_port(tmp_path):
    async with Fake(prefill_ok()) as p, Fake(decode_json) as d, \
            sidecar(d, tmp_path, [p.address], metrics_port=free_port()) as sc:
        await post(sc, target=p.address)
        await post(sc, target="127.0.0.1:1")
        async with sc.client.get(f"http://127.0.0.1:{sc.metrics_port}/metrics") as r:
            text = await r.text()
        assert 'epp_sidecar_requests_total{outcome="prefill_decode"} 1' in text
        assert 'epp_sidecar_requests_total{outcome="ssrf_denied"} 1' in text


async def test_allowlist_disabled_and_malformed_targets():
    a = Allowlist(False)
    assert a.allowed("anything:1")
    on = Allowlist(True)
    assert not on.allowed("10.0.0.1:8000")          # no members yet
    await on.start()                                # nothing to watch: stays empty
    assert on.members() == set()
    await on.stop()
