"""The pool as epp sees it (for the page and /debug/pool): per endpoint its address, role, readiness,
the scraped load, epp's own in-flight count, the KV-event publisher's state and how old the metrics are;
and the scheduling config the page needs to read the scores (profiles, scorers, weights)."""
from __future__ import annotations

from typing import Any

from ..datalayer.endpoint import now
from ..datalayer.store import EndpointStore
from ..scheduling.framework import KVEventStatus
from ..scheduling.scheduler import Scheduler

ROLE_LABEL = "llm-d.ai/role"


def pool_view(store: EndpointStore, scheduler: Scheduler, staleness: float) -> list[dict[str, Any]]:
    kv: dict[str, dict] = {}
    for p in scheduler.plugins_of(KVEventStatus):
        kv.update(p.kv_event_status())
    t = now()
    out = []
    for ep in store.snapshot():
        m = ep.metrics
        fresh = m.updated > 0.0 and t - m.updated <= staleness
        out.append({
            "name": ep.name, "address": ep.address, "namespace": ep.namespace,
            "role": ep.labels.get(ROLE_LABEL, ""), "ready": ep.ready, "metrics_fresh": fresh,
            # candidates are ready endpoints with fresh metrics (all ready ones when every one is stale)
            "queue": m.waiting, "running": m.running, "kv_cache_usage": round(m.kv_usage, 4),
            "in_flight": ep.in_flight, "in_flight_tokens": ep.in_flight_tokens,
            "metrics_age_s": round(t - m.updated, 3) if m.updated else None, "scrape_errors": ep.scrape_errors,
            "kv_events": kv.get(ep.address), "engine": ep.engine,
        })
    out.sort(key=lambda e: (e["role"], e["address"]))
    return out


def config_view(scheduler: Scheduler) -> dict[str, Any]:
    profiles = {}
    for name, prof in scheduler.profiles.items():
        profiles[name] = {
            "filters": [{"name": f.name, "type": f.type_name} for f in prof.filters],
            "scorers": [{"name": ws.scorer.name, "type": ws.scorer.type_name, "weight": ws.weight}
                        for ws in prof.scorers],
            "picker": {"name": prof.picker.name, "type": prof.picker.type_name},
        }
    h = scheduler.handler
    return {"handler": {"name": h.name, "type": h.type_name}, "profiles": profiles}
