"""The scraper against real sockets: a hung or garbage endpoint never stalls the others."""
import asyncio
import time

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.scraper import Scraper
from epp.datalayer.store import EndpointStore
from testbed.http1 import LAST_CHUNK, chunk, chunked_head, read_request, response

GOOD = b"vllm:num_requests_waiting 4\nvllm:kv_cache_usage_perc 0.5\n"


async def serve(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def good(reader, writer):
    try:
        while True:
            await read_request(reader)
            writer.write(response(200, GOOD, ctype=None))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def chunked(reader, writer):
    try:
        while True:
            await read_request(reader)
            writer.write(chunked_head())
            for part in (GOOD[:10], GOOD[10:]):
                writer.write(chunk(part))
            writer.write(LAST_CHUNK)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def hung(reader, writer):
    await asyncio.sleep(3600)


async def garbage(reader, writer):
    await read_request(reader)
    writer.write(b"\x00\x01garbage\r\n\r\n")                 # not HTTP at all
    await writer.drain()
    writer.close()


async def html(reader, writer):
    await read_request(reader)
    writer.write(response(200, b"<html>", ctype=None, close=True))
    await writer.drain()
    writer.close()


async def test_bad_endpoints_do_not_stall_good_ones():
    servers = {}
    for name, h in (("good", good), ("chunked", chunked), ("hung", hung), ("garbage", garbage), ("html", html)):
        servers[name] = await serve(h)
    store = EndpointStore()
    store.replace([Endpoint(name=n, address=f"127.0.0.1:{port}") for n, (_, port) in servers.items()]
                  + [Endpoint(name="refused", address="127.0.0.1:1")])
    scraper = Scraper(store, interval=0.05, timeout=0.3)
    scraper.start()
    try:
        await asyncio.sleep(1.0)
        eps = {ep.name: ep for ep in store.snapshot()}
        now = time.monotonic()
        for name in ("good", "chunked"):
            m = eps[name].metrics
            assert (m.waiting, m.kv_usage) == (4.0, 0.5)
            assert now - m.updated < 0.3, f"{name} was not scraped every 50 ms"
        for name in ("hung", "garbage", "html", "refused"):
            assert eps[name].metrics.updated == 0.0 and eps[name].scrape_errors >= 1
        assert scraper.scrapes >= 20
        # an endpoint removed from the pool stops being scraped
        store.replace([eps["good"]])
        await asyncio.sleep(0.1)
        assert list(scraper.targets) == [eps["good"].address]
    finally:
        await scraper.stop()
        for server, _ in servers.values():
            server.close()
