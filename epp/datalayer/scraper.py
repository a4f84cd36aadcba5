"""Scrapes every endpoint's /metrics, off the request path.

One timer drives all endpoints: each tick sends a GET on every idle keep-alive connection whose
turn has come; answers arrive in protocol callbacks and replace the endpoint's Metrics object
whole (a scheduler never sees half an update). A hung or garbage endpoint only ever delays itself:
a request older than the timeout closes its connection, and a failing endpoint backs off to 1 s.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Callable

from .address import host_port
from .endpoint import Endpoint, now
from .http_get import GetConnection, HTTPError
from .metrics_parse import SGLANG, VLLM, MetricNames, MetricsParseError, parse_metrics
from .store import EndpointStore

log = logging.getLogger(__name__)

FULL_EVERY = 20  # at 50 ms, LoRA adapter changes are seen within a second


def metric_names_for(ep: Endpoint, vllm_names: MetricNames = VLLM) -> MetricNames:
    return SGLANG if ep.engine.lower() == "sglang" else vllm_names


class _Target:
    __slots__ = ("scraper", "ep", "host", "port", "conn", "connecting", "sent_at", "next_at", "failing", "request",
                 "count")

    def __init__(self, scraper: "Scraper", ep: Endpoint) -> None:
        self.scraper = scraper
        self.ep = ep
        self.host, port = ep.address.rsplit(":", 1)
        self.host = self.host.strip("[]")
        # the model server may serve metrics on another port than it serves requests (and over TLS)
        self.port = scraper.port or int(port)
        self.conn: GetConnection | None = None
        self.connecting: asyncio.Task | None = None
        self.sent_at = 0.0       # loop time of the request in flight; 0 when none
        self.next_at = 0.0
        self.failing = False
        self.count = 0
        self.request = f"GET {scraper.path} HTTP/1.1\r\nHost: {host_port(self.host, self.port)}\r\nAccept: text/plain\r\n\r\n".encode()

    def tick(self, t: float) -> None:
        if self.sent_at:
            if t - self.sent_at > self.scraper.timeout:
                self.fail(TimeoutError(f"no answer in {self.scraper.timeout:.2f}s"))
            return
        if t < self.next_at or self.connecting is not None:
            return
        conn = self.conn
        if conn is None or not conn.usable:
            self.connecting = asyncio.get_running_loop().create_task(self._connect(t))
            return
        self.sent_at = t
        conn.get(self.request)

    async def _connect(self, t: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.scraper.timeout):
                _, self.conn = await loop.create_connection(lambda: GetConnection(self.done, self.fail), self.host,
                                                            self.port, ssl=self.scraper.tls,
                                                            server_hostname=self.host if self.scraper.tls else None)
            self.sent_at = loop.time()
            self.conn.get(self.request)
        except (OSError, TimeoutError) as e:
            self.fail(e)
        finally:
            self.connecting = None

    def done(self, status: int, page: bytes) -> None:
        self.sent_at = 0.0
        try:
            if status != 200:
                raise HTTPError(f"GET {self.scraper.path}: status {status}")
            # LoRA and cache-configuration series are read on every FULL_EVERY-th scrape only
            full = self.count % FULL_EVERY == 0
            names = self.scraper.names_for(self.ep) if self.scraper.names_for else \
                metric_names_for(self.ep, self.scraper.vllm_names)
            self.ep.metrics = parse_metrics(page, names, now(), None if full else self.ep.metrics)
            self.count += 1
        except (HTTPError, MetricsParseError, ValueError) as e:
            self.fail(e)
            return
        s = self.scraper
        s.scrapes += 1
        self.ep.scrape_errors = 0
        for fn in s.listeners:
            fn()
        if self.failing:
            log.info("metrics from %s (%s) are back", self.ep.name, self.ep.address)
            self.failing = False

    def fail(self, e: Exception) -> None:
        self.sent_at = 0.0
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        s = self.scraper
        s.errors += 1
        self.ep.scrape_errors += 1
        if not self.failing:  # log the change, not every failure
            log.warning("scraping %s (%s) failed: %s", self.ep.name, self.ep.address, e or type(e).__name__)
            self.failing = True
        # retry less often while failing, up to 1 s apart
        self.next_at = asyncio.get_running_loop().time() + min(1.0, s.interval * (1 << min(self.ep.scrape_errors, 5)))

    def close(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Scraper:
    def __init__(self, store: EndpointStore, interval: float = 0.05, timeout: float = 1.0,
                 path: str = "/metrics", vllm_names: MetricNames = VLLM, scheme: str = "http", port: int | None = 0,
                 insecure_skip_verify: bool = True, names_for: Callable[[Endpoint], MetricNames] | None = None,
                 ca_cert: str = "", client_cert: str = "", client_key: str = "") -> None:
        """`port` 0 (or None) scrapes each endpoint on its own port (metrics-data-source's port or
        --model-server-metrics-port: metrics served apart from inference); `scheme` https verifies the
        server's certificate unless `insecure_skip_verify` (upstream's default: model servers rarely have
        one that names their pod IP); names_for: the metric names of an endpoint's engine
        (core-metrics-extractor), else vLLM's (vllm_names) or SGLang's by the engine label; ca_cert,
        client_cert/client_key: https's CA and client certificate (files; read at start)."""
        self.store = store
        self.interval = interval
        self.timeout = timeout
        self.path = path
        self.port = port
        self.tls: ssl.SSLContext | None = None
        if scheme == "https":
            self.tls = ssl.create_default_context(cafile=ca_cert or None)
            if insecure_skip_verify:
                self.tls.check_hostname = False
                self.tls.verify_mode = ssl.CERT_NONE
            if client_cert:
                self.tls.load_cert_chain(client_cert, client_key)
        self.vllm_names = vllm_names
        self.names_for = names_for
        self.targets: dict[str, _Target] = {}
        self.scrapes = 0
        self.errors = 0
        self.listeners: list[Callable[[], None]] = []   # called after each successful scrape (new metrics)
        self._timer: asyncio.TimerHandle | None = None
        store.on_change(self._on_change)

    def start(self) -> None:
        self._on_change(list(self.store.snapshot()), [])
        self._tick()

    def _on_change(self, added: list[Endpoint], removed: list[Endpoint]) -> None:
        for ep in removed:
            t = self.targets.pop(ep.address, None)
            if t is not None:
                t.close()
        for ep in added:
            if ep.address not in self.targets:
                self.targets[ep.address] = _Target(self, ep)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        t = loop.time()
        for target in list(self.targets.values()):
            target.tick(t)
        self._timer = loop.call_at(t + self.interval, self._tick)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for t in self.targets.values():
            t.close()
        self.targets.clear()
