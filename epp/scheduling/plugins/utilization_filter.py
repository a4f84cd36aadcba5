"""utilization-filter (Alpha): keeps an endpoint only when every condition holds, each a cap on one
metric: active-requests (the EPP's in-flight count, from inflight-load-producer), running-requests,
waiting-queue, kv-cache-utilization (a fraction, cap <= 1) from the model server's metrics. A metric
an endpoint lacks counts as 0. When every endpoint is dropped and fallbackOnEmpty is true, all stay."""
from __future__ import annotations

from ..framework import (ALPHA, BindsPlugins, Filter, InFlightLoadConsumer, need_bool, need_number, need_str,
                         params_error, register)
from .inflight_load_producer import find_inflight

METRICS = ("active-requests", "running-requests", "waiting-queue", "kv-cache-utilization")


@register
class UtilizationFilter(Filter, BindsPlugins, InFlightLoadConsumer):
    type_name = "utilization-filter"
    stability = ALPHA

    def __init__(self, name: str | None = None, conditions: list | None = None, fallbackOnEmpty: bool = False,
                 inFlightLoadProducerName: str = "") -> None:
        super().__init__(name)
        t = self.type_name
        if not isinstance(conditions, list) or not conditions:
            raise params_error(t, "utilization filter requires at least one condition")
        self.conditions: list[tuple[str, float]] = []
        for i, c in enumerate(conditions):
            if not isinstance(c, dict) or set(c) - {"metric", "maxValue"}:
                raise params_error(t, f"conditions[{i}] takes metric and maxValue")
            metric = need_str(t, f"conditions[{i}].metric", c.get("metric"), METRICS)
            if c.get("maxValue") is None:
                raise params_error(t, f"utilization filter condition for {metric!r} requires maxValue")
            cap = need_number(t, f"conditions[{i}].maxValue", c["maxValue"], 0.0,
                              1.0 if metric == "kv-cache-utilization" else None)
            self.conditions.append((metric, cap))
        self.fallback = need_bool(t, "fallbackOnEmpty", fallbackOnEmpty)
        self.producer_name = inFlightLoadProducerName
        self.producer = None

    def wants_inflight_load(self) -> bool:
        return any(m == "active-requests" for m, _ in self.conditions)

    def bind(self, plugins: dict) -> None:
        self.producer = find_inflight(plugins, self.producer_name)

    def _value(self, ep, metric: str) -> float:
        if metric == "active-requests":
            return self.producer.load(ep.address)[0] if self.producer is not None else ep.in_flight
        m = ep.metrics
        if metric == "running-requests":
            return m.running
        if metric == "waiting-queue":
            return m.waiting
        return m.kv_usage

    def filter(self, state, request, endpoints):
        conds = self.conditions
        kept = [ep for ep in endpoints if all(self._value(ep, m) <= cap for m, cap in conds)]
        if not kept and self.fallback:
            return list(endpoints)
        return kept
