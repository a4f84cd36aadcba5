"""core-metrics-extractor: which metrics of a model server's page mean queue depth, running requests,
KV-cache use, LoRA adapters and cache shape, per engine (added by default).

The engine of an endpoint is its pod label engineLabelKey (llm-d.ai/engine-type, falling back to
inference.networking.k8s.io/engine-type), else defaultEngine (vllm). Built in: vllm, sglang,
trtllm-serve, triton-tensorrt-llm, triton; engineConfigs add engines or replace these by name.
A spec is a metric name with an optional label selector (nv_trt_llm_request_metrics{request_type=
waiting}). customMetrics map a spec to an endpoint attribute (what endpoint-attribute-filter and
-scorer read).
"""
from __future__ import annotations

from ...datalayer.metrics_parse import MetricNames, parse_spec
from ..framework import DataExtractor, need_str, params_error, register

_ENGINE_KEYS = {"name", "queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec", "loraSpec", "cacheInfoSpec",
                "cacheBlockSizeLabelName", "cacheNumBlocksLabelName", "cacheBlockSizeSpec", "cacheNumBlocksSpec",
                "customMetrics"}
# upstream's built-in engines (queued, running, kv usage, lora, cache info, extra)
BUILT_IN = {
    "vllm": {"queuedRequestsSpec": "vllm:num_requests_waiting", "runningRequestsSpec": "vllm:num_requests_running",
             "kvUsageSpec": "vllm:kv_cache_usage_perc", "loraSpec": "vllm:lora_requests_info",
             "cacheInfoSpec": "vllm:cache_config_info"},
    "sglang": {"queuedRequestsSpec": "sglang:num_queue_reqs", "runningRequestsSpec": "sglang:num_running_reqs",
               "kvUsageSpec": "sglang:token_usage", "cacheInfoSpec": "sglang:cache_config_info",
               "cacheBlockSizeLabelName": "page_size", "cacheNumBlocksLabelName": "num_pages"},
    "trtllm-serve": {"queuedRequestsSpec": "trtllm_num_requests_waiting",
                     "runningRequestsSpec": "trtllm_num_requests_running",
                     "kvUsageSpec": "trtllm_kv_cache_utilization",
                     "cacheBlockSizeSpec": "trtllm_kv_cache_tokens_per_block",
                     "cacheNumBlocksSpec": "trtllm_kv_cache_max_blocks"},
    "triton-tensorrt-llm": {
        "queuedRequestsSpec": "nv_trt_llm_request_metrics{request_type=waiting}",
        "runningRequestsSpec": "nv_trt_llm_request_metrics{request_type=scheduled}",
        "kvUsageSpec": "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}",
        "cacheBlockSizeSpec": "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=tokens_per}",
        "cacheNumBlocksSpec": "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=max}"},
    "triton": {"queuedRequestsSpec": "nv_inference_pending_request_count",
               "runningRequestsSpec": "nv_inference_exec_count"},
}
VLLM_KV_OLD = "vllm:gpu_cache_usage_perc"   # vLLM's older name of the KV-cache gauge, still read


def engine_names(plugin: str, cfg: dict) -> MetricNames:
    """MetricNames for one engine config; raises ValueError on a bad spec."""
    filters = {}

    def spec(key: str, field: str) -> str:
        v = cfg.get(key) or ""
        if not v:
            return ""
        try:
            name, f = parse_spec(need_str(plugin, key, v))
        except ValueError as e:
            raise params_error(plugin, str(e)) from None
        if f:
            filters[field] = f
        return name

    queued, running = spec("queuedRequestsSpec", "waiting"), spec("runningRequestsSpec", "running")
    kv = spec("kvUsageSpec", "kv_usage")
    if not queued:
        raise params_error(plugin, f"engine {cfg.get('name')!r}: queuedRequestsSpec is required")
    custom = []
    for i, cm in enumerate(cfg.get("customMetrics") or []):
        if not isinstance(cm, dict) or set(cm) - {"attributeKey", "metricSpec"}:
            raise params_error(plugin, f"customMetrics[{i}] takes attributeKey and metricSpec")
        key = need_str(plugin, f"customMetrics[{i}].attributeKey", cm.get("attributeKey"))
        try:
            name, f = parse_spec(need_str(plugin, f"customMetrics[{i}].metricSpec", cm.get("metricSpec")))
        except ValueError as e:
            raise params_error(plugin, str(e)) from None
        if not key or not name:
            raise params_error(plugin, f"customMetrics[{i}]: attributeKey and metricSpec are required")
        custom.append((key, name, f))
    kv_names = (kv, VLLM_KV_OLD) if kv == "vllm:kv_cache_usage_perc" else ((kv,) if kv else ())
    return MetricNames(
        waiting=queued, running=running, kv_usage=kv_names, lora_info=spec("loraSpec", "lora"),
        cache_info=spec("cacheInfoSpec", "cache_info"), filters=tuple(filters.items()),
        cache_block_label=cfg.get("cacheBlockSizeLabelName") or "block_size",
        cache_blocks_label=cfg.get("cacheNumBlocksLabelName") or "num_gpu_blocks",
        block_size_gauge=cfg.get("cacheBlockSizeSpec") or "", num_blocks_gauge=cfg.get("cacheNumBlocksSpec") or "",
        custom=tuple(custom))


@register
class CoreMetricsExtractor(DataExtractor):
    type_name = "core-metrics-extractor"

    def __init__(self, name: str | None = None, engineLabelKey: str = "", defaultEngine: str = "",
                 engineConfigs: list | None = None) -> None:
        super().__init__(name)
        t = self.type_name
        self.label_key = need_str(t, "engineLabelKey", engineLabelKey or "") or "llm-d.ai/engine-type"
        self.default_engine = need_str(t, "defaultEngine", defaultEngine or "") or "vllm"
        configs = {k: dict(v, name=k) for k, v in BUILT_IN.items()}
        if engineConfigs is not None and not isinstance(engineConfigs, list):
            raise params_error(t, "engineConfigs must be a list")
        for i, ec in enumerate(engineConfigs or []):
            if not isinstance(ec, dict):
                raise params_error(t, f"engineConfigs[{i}] must be a mapping")
            unknown = sorted(set(ec) - _ENGINE_KEYS)
            if unknown:
                raise params_error(t, f"engineConfigs[{i}]: unknown field {unknown[0]!r}; known: "
                                      f"{', '.join(sorted(_ENGINE_KEYS))}")
            configs[need_str(t, f"engineConfigs[{i}].name", ec.get("name"))] = ec
        self.engines = {k: engine_names(t, v) for k, v in configs.items()}
        if self.default_engine not in self.engines:
            raise params_error(t, f"defaultEngine {self.default_engine!r} has no engine config; known: "
                                  f"{', '.join(sorted(self.engines))}")
        # anything other than upstream's defaults: the scraper then asks this plugin for every endpoint's names
        self.customized = bool(engineConfigs) or bool(engineLabelKey) or bool(defaultEngine)

    def engine_of(self, labels: dict[str, str]) -> str:
        return (labels.get(self.label_key) or labels.get("inference.networking.k8s.io/engine-type")
                or self.default_engine)

    def names_for(self, endpoint) -> MetricNames:
        """The metric names of the endpoint's engine (an unknown engine reads as the default one)."""
        return self.engines.get(self.engine_of(endpoint.labels)) or self.engines[self.default_engine]
