"""The EPP's Prometheus metrics, named as GIE's EPP names them (users' dashboards read these)."""
from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from .histogram import Histogram

_LATENCY_BUCKETS = (0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15,
                    20, 30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600)
_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536, 131072,
                  262144, 524288, 1048576)
_FAST_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


class EPPMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        self.registry = r
        om = ["model_name", "target_model_name"]
        self.request_total = Counter("inference_objective_request_total",
                                     "Counter of inference objective requests broken out for each model and target model.", om, registry=r)
        self.request_error_total = Counter("inference_objective_request_error_total",
                                           "Counter of inference objective requests errors broken out for each model and target model.",
                                           om + ["error_code"], registry=r)
        self.request_duration = Histogram("inference_objective_request_duration_seconds",
                                          "Inference objective response latency distribution in seconds for each model and target model.",
                                          om, buckets=_LATENCY_BUCKETS, registry=r)
        self.input_tokens = Histogram("inference_objective_input_tokens",
                                      "Inference objective input token count distribution for requests in each model.",
                                      om, buckets=_TOKEN_BUCKETS, registry=r)
        self.output_tokens = Histogram("inference_objective_output_tokens",
                                       "Inference objective output token count distribution for requests in each model.",
                                       om, buckets=_TOKEN_BUCKETS, registry=r)
        self.cached_tokens = Histogram("inference_objective_prompt_cached_tokens",
                                       "Inference objective prompt cached token count distribution for requests in each model.",
                                       om, buckets=_TOKEN_BUCKETS, registry=r)
        self.running_requests = Gauge("inference_objective_running_requests",
                                      "Inference objective number of running requests in each model.", ["model_name"], registry=r)
        self.scheduler_e2e = Histogram("inference_extension_scheduler_e2e_duration_seconds",
                                       "Scheduling latency distribution in seconds.", buckets=_FAST_BUCKETS, registry=r)
        self.plugin_duration = Histogram("inference_extension_plugin_duration_seconds",
                                         "Plugin processing latency distribution in seconds for each extension point, plugin type and plugin name.",
                                         ["extension_point", "plugin_type", "plugin_name"], buckets=_FAST_BUCKETS, registry=r)
        self.prefix_hit_ratio = Histogram("inference_extension_prefix_indexer_hit_ratio",
                                          "Ratio of prefix length matched to total prefix length in the cache lookup.",
                                          buckets=(0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1), registry=r)
        self.served_total = Counter("epp_served_endpoint_total",
                                    "Requests by the endpoint the proxy reports it served them from.", ["endpoint"], registry=r)
