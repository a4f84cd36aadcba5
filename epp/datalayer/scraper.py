"""Scrapes every endpoint's /metrics on its own schedule, off the request path.

One task per endpoint: a hung or garbage endpoint only ever delays itself. Each scrape replaces the
endpoint's Metrics object whole, so a scheduler reading it never sees half an update.
"""
from __future__ import annotations

import asyncio
import logging

from .endpoint import Endpoint, now
from .http_get import HTTPError, KeepAliveClient
from .metrics_parse import SGLANG, VLLM, MetricNames, MetricsParseError, parse_metrics
from .store import EndpointStore

log = logging.getLogger(__name__)


def metric_names_for(ep: Endpoint, vllm_names: MetricNames = VLLM) -> MetricNames:
    return SGLANG if ep.engine.lower() == "sglang" else vllm_names


class Scraper:
    def __init__(self, store: EndpointStore, interval: float = 0.05, timeout: float = 1.0,
                 path: str = "/metrics", vllm_names: MetricNames = VLLM) -> None:
        self.store = store
        self.interval = interval
        self.timeout = timeout
        self.path = path
        self.vllm_names = vllm_names
        self._tasks: dict[str, asyncio.Task] = {}
        self.scrapes = 0
        self.errors = 0
        store.on_change(self._on_change)

    def start(self) -> None:
        self._on_change(list(self.store.snapshot()), [])

    def _on_change(self, added: list[Endpoint], removed: list[Endpoint]) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # not started yet: start() picks the pool up
        for ep in removed:
            task = self._tasks.pop(ep.address, None)
            if task:
                task.cancel()
        for ep in added:
            if ep.address not in self._tasks:
                self._tasks[ep.address] = asyncio.create_task(self._run(ep), name=f"scrape {ep.address}")

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def scrape_once(self, ep: Endpoint, client: KeepAliveClient) -> None:
        async with asyncio.timeout(self.timeout):
            status, page = await client.get(self.path)
        if status != 200:
            raise HTTPError(f"GET {self.path}: status {status}")
        ep.metrics = parse_metrics(page, metric_names_for(ep, self.vllm_names), now())

    async def _run(self, ep: Endpoint) -> None:
        ip, port = ep.ip, int(ep.address.rsplit(":", 1)[1])
        client = KeepAliveClient(ip, port)
        loop = asyncio.get_running_loop()
        failing = False
        try:
            while True:
                started = loop.time()
                try:
                    await self.scrape_once(ep, client)
                    self.scrapes += 1
                    if failing:
                        log.info("metrics from %s (%s) are back", ep.name, ep.address)
                    failing = False
                    ep.scrape_errors = 0
                except (OSError, HTTPError, MetricsParseError, TimeoutError, ValueError) as e:
                    self.errors += 1
                    ep.scrape_errors += 1
                    client.close()
                    if not failing:  # log the change, not every failure
                        log.warning("scraping %s (%s) failed: %s", ep.name, ep.address, e or type(e).__name__)
                    failing = True
                # a failing endpoint is retried less often, up to 1 s apart
                delay = self.interval if not failing else min(1.0, self.interval * (1 << min(ep.scrape_errors, 5)))
                await asyncio.sleep(max(0.0, delay - (loop.time() - started)))
        finally:
            client.close()
