"""vLLM's Prometheus metrics (names and labels as vLLM V1 exports them), on a per-server registry.

Gauges and counters are read from the engine at scrape time, so they can never drift from its state;
latency histograms are observed as requests progress, in engine seconds (what vLLM would measure).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from .engine import Engine, Request

TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0]
REQUEST_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0]


class _EngineCollector:
    def __init__(self, sim: "SimMetrics"):
        self.sim = sim

    def collect(self):
        s = self.sim
        e = s.engine
        lv = [s.model_name, s.engine_label]
        labels = ["model_name", "engine"]

        def gauge(name, doc, value):
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(lv, value)
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(lv, value)
            return c

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.", len(e.running))
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", len(e.waiting))
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.kv_usage())
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                      e.num_preemptions_total)
        cc = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                               labels=["block_size", "num_gpu_blocks", "num_cpu_blocks", "cache_dtype",
                                       "enable_prefix_caching", "gpu_memory_utilization", "engine"])
        cc.add_metric([str(e.cfg.block_size), str(e.cfg.num_gpu_blocks), str(e.cfg.offload_blocks), "auto",
                       str(e.cfg.enable_prefix_caching), "0.9", s.engine_label], 1.0)
        yield cc
        if s.lora_enabled:
            run, wait = s.lora_names(e)
            li = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                   labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"])
            li.add_metric([str(s.max_loras), run, wait], s.lora_updated_at)
            yield li
        yield counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
                      e.kv.queries)
        yield counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", e.kv.hits)
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", e.prompt_tokens_total)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", e.generation_tokens_total)
        rs = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                 labels=labels + ["finished_reason"])
        for reason, n in sorted(s.success.items()):
            rs.add_metric(lv + [reason], n)
        yield rs


class SimMetrics:
    def __init__(self, engine: "Engine", model_name: str, engine_label: str = "0", lora_enabled: bool = False,
                 max_loras: int = 0, lora_name_of=None):
        self.engine = engine
        self.model_name = model_name
        self.engine_label = engine_label
        self.lora_enabled = lora_enabled
        self.max_loras = max_loras
        self.lora_name_of = lora_name_of or (lambda r: r.lora_name)
        self.lora_updated_at = time.time()
        self._last_lora = None
        self.success: dict[str, int] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(self))
        lab = ["model_name", "engine"]
        h = lambda n, d, b: Histogram(n, d, lab, buckets=b, registry=self.registry).labels(model_name, engine_label)
        self.ttft = h("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                      TTFT_BUCKETS)
        self.itl = h("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.e2e = h("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                     REQUEST_BUCKETS)
        self.queue = h("vllm:request_queue_time_seconds",
                       "Histogram of time spent in WAITING phase for request.", REQUEST_BUCKETS)
        self.prefill = h("vllm:request_prefill_time_seconds",
                         "Histogram of time spent in PREFILL phase for request.", REQUEST_BUCKETS)

    def lora_names(self, e: "Engine") -> tuple[str, str]:
        run = sorted({n for n in (self.lora_name_of(r) for r in e.running) if n})
        wait = sorted({n for n in (self.lora_name_of(r) for r in e.waiting) if n})
        state = (tuple(run), tuple(wait))
        if state != self._last_lora:    # vLLM's value is the time the adapter sets last changed
            self._last_lora = state
            self.lora_updated_at = time.time()
        return ",".join(run), ",".join(wait)

    def on_token(self, r: "Request") -> None:
        if len(r.token_times) >= 2:
            self.itl.observe(r.token_times[-1] - r.token_times[-2])

    def on_finish(self, r: "Request") -> None:
        self.success[r.finish_reason or "length"] = self.success.get(r.finish_reason or "length", 0) + 1
        if r.first_token_time is not None:
            self.ttft.observe(r.first_token_time - r.arrival_time)
        if r.finished_time is not None:
            self.e2e.observe(r.finished_time - r.arrival_time)
        if r.first_scheduled_time is not None:
            self.queue.observe(r.first_scheduled_time - r.arrival_time)
            if r.first_token_time is not None:
                self.prefill.observe(r.first_token_time - r.first_scheduled_time)

    def render(self) -> bytes:
        return generate_latest(self.registry)
