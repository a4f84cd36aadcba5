"""The Grafana dashboard (manifests/dashboards/epp.json): every query names only metrics that epp or vLLM
export, so a renamed metric breaks this test, not an operator's dashboard. epp's names are collected
from its own collectors, vLLM's from the simulator (which exports vLLM's names and labels)."""
import json
import os
import re

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from epp.datalayer.endpoint import Endpoint, Metrics, now
from epp.datalayer.store import EndpointStore
from epp.metrics import EPPMetrics
from epp.observe.accuracy import PredictionAccuracy
from epp.scheduling.plugins import load_all
from epp.server.pool_metrics import PoolCollector

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARD = os.path.join(ROOT, "manifests", "dashboards", "epp.json")

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def names_of(collectors) -> set[str]:
    out = set()
    for c in collectors:
        for fam in c.collect():
            out.add(fam.name)
            out.update(s.name for s in fam.samples)
            if fam.type == "counter":
                out.add(fam.name + "_total")
            if fam.type == "histogram":
                out.update(fam.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return out


@pytest.fixture(scope="module")
def exported() -> set[str]:
    reg = CollectorRegistry()
    EPPMetrics(reg)
    PredictionAccuracy(reg)
    store = EndpointStore()
    store.replace([Endpoint(name="p", address="10.0.0.1:8000", metrics=Metrics(updated=now()))])
    reg.register(PoolCollector(store, "pool", 2.0, lambda: 0))
    load_all()   # the plugins' own metrics (P/D decisions, precise-prefix fallbacks) register on import
    from epp.scheduling.plugins.precise_prefix_cache_producer import _Collector
    epp = names_of([reg, REGISTRY, _Collector()])
    from vllm_sim.cli import build_parser
    from vllm_sim.server import SimServer
    sim = SimServer(build_parser().parse_args(["--port", "0", "--model", "m"]))
    return epp | names_of([sim.metrics.registry])


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: label matchers, by/without lists, ranges and strings removed,
    then every identifier that is not a function call or a keyword."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    out = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or m.group(0).lower() in PROMQL_WORDS:
            continue
        out.add(m.group(0))
    return out


def queries(doc) -> list[tuple[str, str]]:
    """(where, expression) of every panel target and every templating query."""
    out = []

    def walk(panels, where):
        for p in panels:
            for t in p.get("targets", []):
                out.append((f"{where} / {p.get('title')}", t["expr"]))
            walk(p.get("panels", []), f"{where} / {p.get('title')}")
    walk(doc["panels"], "panel")
    for v in doc.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and q:
            m = re.fullmatch(r"label_values\(\s*([^,]+?)\s*,\s*\w+\s*\)", q)
            out.append((f"variable {v['name']}", m.group(1) if m else q))
    return out


def test_the_extractor_finds_metrics_and_only_metrics():
    assert metric_names('histogram_quantile(0.9, sum by (le, pod) (rate(vllm:time_to_first_token_seconds_bucket'
                        '{pod=~"$pod"}[$__rate_interval])))') == {"vllm:time_to_first_token_seconds_bucket"}
    assert metric_names("sum(rate(a_total[5m])) / sum without (x) (b)") == {"a_total", "b"}


def test_every_dashboard_query_names_a_metric_epp_or_vllm_exports(exported):
    with open(DASHBOARD) as f:
        doc = json.load(f)
    qs = queries(doc)
    assert len(qs) >= 20
    unknown = [(where, name) for where, expr in qs for name in metric_names(expr) if name not in exported]
    assert not unknown, f"dashboard queries name metrics nobody exports: {unknown}"
    used = {n for _, expr in qs for n in metric_names(expr)}
    # it covers the pool, epp itself, routing accuracy and P/D decisions
    for name in ("inference_pool_ready_pods", "vllm:kv_cache_usage_perc", "inference_extension_scheduler_e2e_duration_seconds_bucket",
                 "epp_prefix_cache_prediction_error_tokens_bucket", "epp_prefix_cache_predicted_tokens_total",
                 "llm_d_inference_scheduler_pd_decision_total"):
        assert name in used, name
    rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]
    assert any("Pool" in r for r in rows) and any("EPP" in r for r in rows) and any("P/D" in r for r in rows)
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])   # Grafana needs unique panel ids
