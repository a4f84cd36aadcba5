"""Pool gauges computed from the endpoint store when Prometheus scrapes, at most once per
--refresh-prometheus-metrics-interval (upstream recomputes them on that timer), and at once after the
pool's membership changed: GIE's inference_pool_* names and llm-d router v0.10's llm_d_epp_* ones
(averages, standard deviations and ready endpoints over the endpoints whose metrics are fresh)."""
from __future__ import annotations

from statistics import pstdev

from prometheus_client.core import GaugeMetricFamily

from ..datalayer.endpoint import now
from ..datalayer.store import EndpointStore


class PoolCollector:
    def __init__(self, store: EndpointStore, pool: str, staleness: float, prefix_sizes=None,
                 prefix_sizes_by_plugin=None, refresh: float = 0.0) -> None:
        self.store = store
        self.pool = pool
        self.staleness = staleness
        self.prefix_sizes = prefix_sizes  # callable -> total entries of prefix indexes, None when none
        self.by_plugin = prefix_sizes_by_plugin  # callable -> [(plugin name, plugin type, entries)]
        self.refresh = refresh
        self._cached: tuple[float, tuple, list] | None = None   # (computed at, snapshot, families)

    def collect(self):
        t = now()
        snap = self.store.snapshot()
        c = self._cached
        if c is not None and c[1] is snap and t - c[0] < self.refresh:
            families = c[2]
        else:
            families = list(self._compute())
            self._cached = (t, snap, families)
        yield from families
        # not pool gauges: the prefix indexes' sizes are read at every scrape
        n = self.prefix_sizes() if self.prefix_sizes is not None else None
        if n is not None:
            size = GaugeMetricFamily("inference_extension_prefix_indexer_size", "Size of the prefix indexer.")
            size.add_metric([], n)
            yield size
        if self.by_plugin is not None:
            sizes = self.by_plugin()
            if sizes:
                fam = GaugeMetricFamily("llm_d_epp_prefix_indexer_size", "[ALPHA] Size of the prefix indexer.",
                                        labels=["plugin_name", "plugin_type"])
                for name, type_name, entries in sizes:
                    fam.add_metric([name, type_name], entries)
                yield fam

    def _compute(self):
        eps = [ep for ep in self.store.snapshot() if ep.ready]
        t = now()
        fresh = [ep for ep in eps if ep.metrics.fresh(t, self.staleness)]
        ready = GaugeMetricFamily("inference_pool_ready_pods", "The number of ready pods in the inference server pool.", labels=["name"])
        ready.add_metric([self.pool], len(eps))
        kv = GaugeMetricFamily("inference_pool_average_kv_cache_utilization",
                               "The average kv cache utilization for an inference server pool.", labels=["name"])
        kv.add_metric([self.pool], sum(ep.metrics.kv_usage for ep in fresh) / len(fresh) if fresh else 0.0)
        queue = GaugeMetricFamily("inference_pool_average_queue_size",
                                  "The average number of requests pending in the model server queue.", labels=["name"])
        queue.add_metric([self.pool], sum(ep.metrics.waiting for ep in fresh) / len(fresh) if fresh else 0.0)
        per_pod = GaugeMetricFamily("inference_pool_per_pod_queue_size",
                                    "The total number of requests pending in the model server queue for each underlying pod.",
                                    labels=["name", "model_server_pod"])
        for ep in fresh:
            per_pod.add_metric([self.pool, ep.name], ep.metrics.waiting)
        yield from (ready, kv, queue, per_pod)
        yield from self._llm_d(fresh)

    def _llm_d(self, fresh):
        values = {"kv_cache_utilization": [ep.metrics.kv_usage for ep in fresh],
                  "queue_size": [ep.metrics.waiting for ep in fresh],
                  "running_requests": [ep.metrics.running for ep in fresh]}
        helps = {"kv_cache_utilization": "kv cache utilization for an inference server pool",
                 "queue_size": "number of requests pending in the model server queue",
                 "running_requests": "number of running requests across model servers in the pool"}
        for key, vals in values.items():
            avg = GaugeMetricFamily(f"llm_d_epp_average_{key}", f"[ALPHA] The average {helps[key]}.", labels=["name"])
            avg.add_metric([self.pool], sum(vals) / len(vals) if vals else 0.0)
            std = GaugeMetricFamily(f"llm_d_epp_std_dev_{key}", f"[ALPHA] The standard deviation {helps[key]}.",
                                    labels=["name"])
            std.add_metric([self.pool], pstdev(vals) if len(vals) > 1 else 0.0)
            yield avg
            yield std
        ready = GaugeMetricFamily("llm_d_epp_ready_endpoints", "[ALPHA] The number of ready endpoints in the "
                                  "inference server pool.", labels=["name"])
        ready.add_metric([self.pool], len(fresh))
        per = GaugeMetricFamily("llm_d_epp_per_endpoint_queue_size", "[ALPHA] The total number of requests pending "
                                "in the model server queue for each underlying endpoint.",
                                labels=["name", "model_server_endpoint"])
        for ep in fresh:
            per.add_metric([self.pool, ep.name], ep.metrics.waiting)
        yield ready
        yield per
