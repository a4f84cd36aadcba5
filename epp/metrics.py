"""The EPP's Prometheus metrics, named as upstream names them (users' dashboards read these): llm-d
router v0.10's llm_d_epp_* family and, beside it, the legacy GIE names it still writes (help text
marked deprecated, as upstream's), computed at scrape time from the llm-d series (epp/histogram.py).

Request-derived label values are capped as upstream caps them: at most 1000 distinct model names
(model_name and target_model_name share the budget; names pinned by InferenceModelRewrite rules do
not count) and 1000 fairness ids per process; later values become "other", so a client cannot grow
the series without bound.
"""
from __future__ import annotations

import os
import threading
import weakref

from prometheus_client import REGISTRY, CollectorRegistry

from .histogram import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15,
                    20, 30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600)
_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536, 131072,
                  262144, 524288, 1048576)
_OUTPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_REQUEST_SIZE_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288,
                         1048576, 2097152, 4194304, 8388608, 16777216, 33554432, 67108864, 134217728, 268435456,
                         536870912, 1073741824)
_RESPONSE_SIZE_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536)
_NTPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_TTFT_BUCKETS = (0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 45,
                 60, 120)
_TPOT_BUCKETS = (0.0005, 0.00205, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6,
                 0.8, 1, 2)
_REQUEST_PROCESSING_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.04, 0.06, 0.1, 0.25, 0.5, 1, 2.5,
                               5, 10)
_FAST_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)

OVERFLOW = "other"
MAX_LABEL_VALUES = 1000


class LiveCollector:
    """A custom collector over every live instance of one kind (plugins that report their state at scrape
    time instead of updating metrics per request or per event). Subclasses implement collect() over
    cls.live; the first track() registers one instance of the subclass in the default registry, so each
    metric name is registered once however many instances run."""

    live: "weakref.WeakSet"
    _registered = False

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        cls.live = weakref.WeakSet()
        cls._registered = False

    @classmethod
    def track(cls, obj) -> None:
        if not cls._registered:
            REGISTRY.register(cls())
            cls._registered = True
        cls.live.add(obj)


class BoundedLabel:
    """At most `limit` distinct values of a request-derived label; new values past it read "other".
    Pinned values (configured model names) are always themselves and do not count."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self.seen: set[str] = set()
        self.pinned: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if not value or value in self.seen or value in self.pinned:
            return value
        with self._lock:
            if len(self.seen) >= self.limit:
                return OVERFLOW
            self.seen.add(value)
        return value

    def pin(self, *values: str) -> None:
        self.pinned.update(v for v in values if v)


MODEL_LABELS = BoundedLabel()
FAIRNESS_LABELS = BoundedLabel()


def capped_model(name: str) -> str:
    return MODEL_LABELS(name)


def capped_fairness_id(fairness_id: str) -> str:
    return FAIRNESS_LABELS(fairness_id)


def deprecated(new: str, text: str) -> str:
    return f"[ALPHA] [Deprecated: Use {new}] {text}"


class EPPMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        self.registry = r
        om = ["model_name", "target_model_name"]
        mfp = om + ["fairness_id", "priority"]
        # ---- llm-d router v0.10 names (with fairness_id and priority): what a request updates
        self.llmd_request_total = Counter("llm_d_epp_request_total", "[ALPHA] Total number of processed requests.",
                                          mfp, registry=r)
        self.llmd_request_error_total = Counter("llm_d_epp_request_error_total",
                                                "[ALPHA] Total number of request errors.", mfp + ["error_code"],
                                                registry=r)
        self.llmd_request_duration = Histogram("llm_d_epp_request_duration_seconds",
                                               "[ALPHA] End-to-end request latency distribution in seconds.", mfp,
                                               buckets=_LATENCY_BUCKETS, registry=r)
        self.llmd_request_size = Histogram("llm_d_epp_request_size_bytes",
                                           "[ALPHA] Incoming request body size distribution in bytes.", mfp,
                                           buckets=_REQUEST_SIZE_BUCKETS, registry=r)
        self.llmd_response_size = Histogram("llm_d_epp_response_size_bytes",
                                            "[ALPHA] Outgoing response body size distribution in bytes.", mfp,
                                            buckets=_RESPONSE_SIZE_BUCKETS, registry=r)
        self.llmd_input_tokens = Histogram("llm_d_epp_request_input_tokens",
                                           "[ALPHA] Input token count distribution per request.", mfp,
                                           buckets=_TOKEN_BUCKETS, registry=r)
        self.llmd_output_tokens = Histogram("llm_d_epp_request_output_tokens",
                                            "[ALPHA] Output token count distribution per request.", mfp,
                                            buckets=_OUTPUT_TOKEN_BUCKETS, registry=r)
        self.llmd_cached_tokens = Histogram(
            "llm_d_epp_request_cached_tokens", "[ALPHA] Distribution of prompt tokens read from cache per request, "
            "as reported by the model server in the response.", mfp, buckets=_TOKEN_BUCKETS, registry=r)
        self.llmd_running = Gauge("llm_d_epp_request_running", "[ALPHA] Current number of active running requests.",
                                  mfp, registry=r)
        self.llmd_ntpot = Histogram(
            "llm_d_epp_request_ntpot_seconds", "[ALPHA] Normalized time per output token in seconds (end-to-end "
            "latency divided by output token count).", mfp, buckets=_NTPOT_BUCKETS, registry=r)
        self.llmd_ttft = Histogram(
            "llm_d_epp_request_ttft_seconds", "[ALPHA] Time to first token in seconds, measured from request "
            "received to first response byte. For non-streaming requests, this equals total request duration.",
            mfp + ["streaming"], buckets=_TTFT_BUCKETS, registry=r)
        self.llmd_tpot = Histogram(
            "llm_d_epp_request_streaming_tpot_seconds", "[ALPHA] Average time per output token in seconds for "
            "streaming requests, computed as (e2e - TTFT) / (output_tokens - 1).", mfp, buckets=_TPOT_BUCKETS,
            registry=r)
        # ---- legacy (GIE) names: views of the llm-d series, summed over the labels they lack
        self.request_total = self.llmd_request_total.view(
            "inference_objective_request_total", deprecated("llm_d_epp_request_total",
            "Counter of inference objective requests broken out for each model and target model."),
            om + ["priority"], registry=r)
        self.request_error_total = self.llmd_request_error_total.view(
            "inference_objective_request_error_total", deprecated("llm_d_epp_request_error_total",
            "Counter of inference objective requests errors broken out for each model and target model."),
            om + ["error_code"], registry=r)
        self.request_duration = self.llmd_request_duration.view(
            "inference_objective_request_duration_seconds", deprecated("llm_d_epp_request_duration_seconds",
            "Inference objective response latency distribution in seconds for each model and target model."),
            om, registry=r)
        self.request_sizes = self.llmd_request_size.view(
            "inference_objective_request_sizes", deprecated("llm_d_epp_request_size_bytes",
            "Inference objective requests size distribution in bytes for each model and target model."),
            om, registry=r)
        self.response_sizes = self.llmd_response_size.view(
            "inference_objective_response_sizes", deprecated("llm_d_epp_response_size_bytes",
            "Inference objective responses size distribution in bytes for each model and target model."),
            om, registry=r)
        self.input_tokens = self.llmd_input_tokens.view(
            "inference_objective_input_tokens", deprecated("llm_d_epp_request_input_tokens",
            "Inference objective input token count distribution for requests in each model."),
            om, registry=r)
        self.output_tokens = self.llmd_output_tokens.view(
            "inference_objective_output_tokens", deprecated("llm_d_epp_request_output_tokens",
            "Inference objective output token count distribution for requests in each model."),
            om, registry=r)
        self.cached_tokens = self.llmd_cached_tokens.view(
            "inference_objective_prompt_cached_tokens", deprecated("llm_d_epp_request_cached_tokens",
            "Inference objective prompt cached token count distribution for requests in each model."),
            om, registry=r)
        self.running_requests = self.llmd_running.view(
            "inference_objective_running_requests", deprecated("llm_d_epp_request_running",
            "Inference objective number of running requests in each model."), ["model_name"], registry=r)
        self.ntpot = self.llmd_ntpot.view(
            "inference_objective_normalized_time_per_output_token_seconds",
            deprecated("llm_d_epp_request_ntpot_seconds", "Inference objective latency divided by number of output "
                       "tokens in seconds for each model and target model."),
            om, registry=r)
        self.request_processing = Histogram(
            "llm_d_epp_request_processing_duration_seconds", "[ALPHA] EPP request processing latency distribution "
            "in seconds, from request receipt until the request body has been handled, including admission control.",
            buckets=_REQUEST_PROCESSING_BUCKETS, registry=r)
        # ---- scheduler and plugins: both names, observed together
        self.scheduler_e2e = Histogram("llm_d_epp_scheduler_e2e_duration_seconds",
                                       "[ALPHA] End-to-end scheduling latency distribution in seconds.",
                                       buckets=_FAST_BUCKETS, registry=r)
        self.scheduler_e2e.view("inference_extension_scheduler_e2e_duration_seconds",
                                deprecated("llm_d_epp_scheduler_e2e_duration_seconds",
                                           "End-to-end scheduling latency distribution in seconds."), registry=r)
        plugin_labels = ["extension_point", "plugin_type", "plugin_name"]
        plugin_help = "Plugin processing latency distribution in seconds for each extension point, plugin type and " \
                      "plugin name."
        self.plugin_duration = Histogram("llm_d_epp_plugin_duration_seconds", "[ALPHA] " + plugin_help, plugin_labels,
                                         buckets=_FAST_BUCKETS, registry=r)
        self.plugin_duration.view("inference_extension_plugin_duration_seconds",
                                  deprecated("llm_d_epp_plugin_duration_seconds", plugin_help), plugin_labels,
                                  registry=r)
        hit_help = "Ratio of prefix length matched to total prefix length in the cache lookup."
        self.llmd_prefix_hit_ratio = Histogram(
            "llm_d_epp_prefix_indexer_hit_ratio", "[ALPHA] " + hit_help, ["plugin_name", "plugin_type"],
            buckets=(0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1), registry=r)
        self.prefix_hit_ratio = self.llmd_prefix_hit_ratio.view(
            "inference_extension_prefix_indexer_hit_ratio", deprecated("llm_d_epp_prefix_indexer_hit_ratio", hit_help),
            registry=r)
        info_help = "General information of the current build of Inference Extension."
        commit, build_ref = os.environ.get("EPP_COMMIT", "unknown"), os.environ.get("EPP_BUILD_REF", "epp-python")
        for name in ("inference_extension_info", "llm_d_epp_info"):
            Gauge(name, "[ALPHA] " + info_help, ["commit", "build_ref"], registry=r).labels(commit, build_ref).set(1)
        self.served_total = Counter("epp_served_endpoint_total",
                                    "Requests by the endpoint the proxy reports it served them from.", ["endpoint"], registry=r)

    def error_code(self, status: int) -> str:
        """Upstream's error_code label: the canonical code of the EPP's answer."""
        return ERROR_CODES.get(status, "Unknown")


# HTTP status of the EPP's own answer -> upstream's error code name (pkg/common/error)
ERROR_CODES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 412: "PreconditionFailed",
               413: "BadRequest", 429: "ResourceExhausted", 500: "Internal", 503: "ServiceUnavailable"}
MODEL_SERVER_ERROR = "ModelServerError"
