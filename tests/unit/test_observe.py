"""The web view's data (epp.observe): what a decision record holds, the ring buffer and its cursor, the
prediction-accuracy metric, the pool snapshot, the plugin state dump, and the admin HTTP app (driven
through WSGI with the event loop in a thread, as the server runs it)."""
import asyncio
import json
import threading
from wsgiref.util import setup_testing_defaults

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from epp import flags
from epp.datalayer.store import EndpointStore
from epp.metrics import EPPMetrics
from epp.observe.admin import AdminApp, LoopBridge
from epp.observe.decisions import DecisionLog, Record
from epp.observe.live import Reader
from epp.observe.observer import Observer
from epp.observe.plugin_state import UNSUPPORTED, plugin_state
from epp.observe.pool import pool_view
from epp.requestcontrol.director import Director
from epp.requestcontrol.errors import EPPError
from epp.scheduling.config import load
from epp.scheduling.scheduler import from_config
from epp.scheduling.types import CachePrediction

from .helpers import endpoint

ANSWER = {"choices": [{"text": "ok"}], "usage": {"prompt_tokens": 400, "completion_tokens": 3,
                                                  "prompt_tokens_details": {"cached_tokens": 256}}}
PROMPT = "shared system prompt " * 80     # ~1.7 KB: several 64-byte blocks
HEADERS = {":path": "/v1/completions", ":method": "POST", "x-gateway-inference-objective": "chat"}


def make(record=True, show_prompts=False, size=1000, config=None, endpoints=3):
    reg = CollectorRegistry()
    metrics = EPPMetrics(reg)
    store = EndpointStore()
    store.replace([endpoint(i + 1, waiting=i) for i in range(endpoints)])
    sched = from_config(load(config), metrics) if config else from_config(load(DEFAULT), metrics)
    obs = Observer(reg, record=record, size=size, show_prompts=show_prompts)
    d = Director(store, sched, metrics, objectives={"chat": 5}, observe=obs)
    return d, obs, reg, store, sched


DEFAULT = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: queue-scorer}
- {type: kv-cache-utilization-scorer}
- {type: prefix-cache-scorer}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer, weight: 2}, {pluginRef: kv-cache-utilization-scorer, weight: 2},
            {pluginRef: prefix-cache-scorer, weight: 3}]
"""


def ask(d, prompt=PROMPT, answer=ANSWER, status=200, chunks=1):
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": 3}).encode()
    dec = d.decide(HEADERS, "/v1/completions", body, None)
    d.response_started(dec, status, False)
    raw = json.dumps(answer).encode()
    step = max(1, len(raw) // chunks)
    for i in range(0, len(raw), step):
        dec.usage.feed(raw[i:i + step])
    d.done(dec, status)
    return dec


def sample(reg, name, **labels):
    return reg.get_sample_value(name, labels)


def count(reg, producer="approx-prefix-cache-producer"):
    """Observations of the error histogram (its +Inf bucket)."""
    return sample(reg, "epp_prefix_cache_prediction_error_tokens_bucket", le="+Inf", plugin_type=producer,
                  plugin_name=producer)


# ---------------------------------------------------------------- records

def test_a_record_holds_every_candidates_scores_the_pick_its_margin_and_the_answer():
    d, obs, *_ = make()
    ask(d)                          # warms the prefix index on the pick
    dec = ask(d)
    rec = dec.trace
    doc = rec.to_dict()
    assert doc["seq"] == 2 and doc["model"] == "m" and doc["objective"] == "chat" and doc["priority"] == 5
    cands = doc["candidates"]
    assert {c["address"] for c in cands} == {"10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"}
    assert cands[0]["picked"] and cands[0]["address"] == doc["pick"] == dec.destination
    for c in cands:
        assert set(c["scores"]) == {"queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer"}
        expect = 2 * c["scores"]["queue-scorer"] + 2 * c["scores"]["kv-cache-utilization-scorer"] \
            + 3 * c["scores"]["prefix-cache-scorer"]
        assert c["total"] == pytest.approx(expect, abs=1e-3)
    runner_up = max(c["total"] for c in cands if not c["picked"])
    assert doc["margin"] == pytest.approx(cands[0]["total"] - runner_up, abs=1e-3)
    # the second request finds its prefix on the pick: predicted in the server's tokens, and the report
    assert doc["predicted_cached_tokens"] > 0 and doc["predicted_by"].startswith("approx-prefix-cache-producer")
    assert doc["cached_tokens"] == 256 and doc["reported_prompt_tokens"] == 400 and doc["status"] == 200
    assert doc["done"] and doc["ttft_ms"] is not None and doc["ttft_ms"] >= 0 and doc["overhead_ms"] > 0
    assert "prompt" not in doc        # prompts are user data: off unless asked for


def test_ttft_is_the_first_body_chunk_not_the_end():
    d, *_ = make()
    body = json.dumps({"model": "m", "prompt": "hi"}).encode()
    dec = d.decide(HEADERS, "/v1/completions", body, None)
    d.response_started(dec, 200, True)
    dec.usage.feed(b"data: {\"choices\": []}\n\n")
    first = dec.trace.first_byte
    assert first > 0
    dec.usage.feed(b"data: [DONE]\n\n")
    assert dec.trace.first_byte == first
    d.done(dec, 200)
    assert dec.trace.ttft_s() == pytest.approx(first - dec.started)


def test_prompts_are_kept_only_with_the_opt_in_and_cut():
    d, obs, *_ = make(show_prompts=True)
    dec = ask(d, prompt="x" * 5000)
    doc = dec.trace.to_dict(with_prompt=obs.log.show_prompts)
    assert doc["prompt"] == "x" * 2048


def test_a_refused_request_shows_in_the_feed_with_its_reason():
    d, obs, _, store, _ = make()
    for ep in store.snapshot():
        ep.metrics.kv_usage = 1.0
        ep.metrics.waiting = 1000
    d.objectives["batch"] = -1
    with pytest.raises(EPPError):
        d.decide({**HEADERS, "x-gateway-inference-objective": "batch"}, "/v1/completions",
                 json.dumps({"model": "m", "prompt": "p"}).encode(), None)
    doc = obs.log.records()[-1].to_dict()
    assert doc["status"] == 429 and doc["pick"] is None and "saturated" in doc["error"] and doc["priority"] == -1


def test_recording_off_costs_no_record_and_no_score_tables():
    d, obs, reg, *_ = make(record=False)
    dec = ask(d)
    assert obs.log is None and dec.trace is None
    assert all(pr.raw is None and pr.scores is None for pr in dec.result.profiles.values())
    # the accuracy metric is there all the same
    assert count(reg) == 1


def test_pd_records_the_prefill_pod_the_reason_and_predicts_on_the_prefill_pod():
    cfg = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: prefill-filter}
- {type: decode-filter}
- {type: queue-scorer}
- {type: prefix-cache-scorer}
- {type: always-disagg-pd-decider}
- type: disagg-profile-handler
  parameters: {deciders: {prefill: always-disagg-pd-decider}}
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: queue-scorer}, {pluginRef: prefix-cache-scorer}]
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: queue-scorer}, {pluginRef: prefix-cache-scorer}]
"""
    reg = CollectorRegistry()
    store = EndpointStore()
    store.replace([endpoint(1, **{"llm-d.ai/role": "prefill"}), endpoint(2, **{"llm-d.ai/role": "decode"}),
                   endpoint(3, **{"llm-d.ai/role": "decode"})])
    obs = Observer(reg, record=True)
    d = Director(store, from_config(load(cfg)), observe=obs)
    dec = ask(d)
    doc = dec.trace.to_dict()
    assert doc["prefill"] == "10.0.0.1:8000" and doc["profile"] == "decode"
    assert doc["reasons"]["pd_decision"] == "prefill-decode"
    assert set(doc["profiles"]) == {"prefill", "decode"}
    assert {c["address"] for c in doc["profiles"]["prefill"]["candidates"]} == {"10.0.0.1:8000"}
    assert doc["profiles"]["decode"]["filtered"] == {"decode-filter": 1}
    assert dec.result.prediction.endpoint == "10.0.0.1:8000"   # the prefill pod computes the prompt


# ---------------------------------------------------------------- the accuracy metric

def test_prediction_error_is_predicted_minus_reported_in_the_servers_tokens():
    d, obs, reg, *_ = make(record=False)
    ask(d)
    dec = ask(d)
    p = dec.result.prediction
    assert p.estimated and p.cached_tokens > 0
    # epp estimated the prompt at ~4 bytes a token; the server counted 400: the prediction is scaled to that
    want = min(400, round(p.cached_tokens * 400 / dec.tokens))
    labels = {"plugin_type": "approx-prefix-cache-producer", "plugin_name": "approx-prefix-cache-producer"}
    assert sample(reg, "epp_prefix_cache_reported_cached_tokens_total", **labels) == 2 * 256
    assert sample(reg, "epp_prefix_cache_reported_prompt_tokens_total", **labels) == 2 * 400
    assert sample(reg, "epp_prefix_cache_predicted_tokens_total", **labels) == want   # the first one predicted 0
    assert count(reg) == 2
    # errors -256 (nothing predicted) and want - 256; buckets are cumulative
    below = lambda le: sample(reg, "epp_prefix_cache_prediction_error_tokens_bucket", le=le, **labels)  # noqa: E731
    assert below("-1024.0") == 0 and below("-256.0") == 1 + (want - 256 <= -256)
    # negative buckets: no _sum or _count (OpenMetrics); the counters give the mean error instead
    assert "epp_prefix_cache_prediction_error_tokens_sum" not in generate_latest(reg).decode()


def test_answers_without_cached_token_usage_or_failed_are_not_counted():
    d, obs, reg, *_ = make(record=False)
    ask(d, answer={"usage": {"prompt_tokens": 10, "completion_tokens": 1}})   # no prompt_tokens_details
    ask(d, status=500)
    assert count(reg) is None


def test_a_real_tokenizer_prediction_is_not_scaled():
    from epp.observe.observer import predicted_tokens
    from epp.requestcontrol.usage import Usage
    u = Usage(prompt_tokens=1000, cached_tokens=512, seen=True, cached_reported=True)
    assert predicted_tokens(CachePrediction("t", "n", "a", 512, estimated=False), 100, u) == 512
    assert predicted_tokens(CachePrediction("t", "n", "a", 50, estimated=True), 100, u) == 500
    assert predicted_tokens(CachePrediction("t", "n", "a", 5000, estimated=True), 100, u) == 1000   # capped


# ---------------------------------------------------------------- the ring buffer

def test_the_log_is_bounded_and_resumes_from_a_cursor():
    log = DecisionLog(size=5)
    for _ in range(12):
        log.add(Record())
    assert len(log) == 5 and log.last == 12 and log.oldest() == 8
    assert [r.seq for r in log.since(9)] == [10, 11, 12]
    assert [r.seq for r in log.since(0)] == [8, 9, 10, 11, 12]        # older ones fell out
    assert [r.seq for r in log.since(0, limit=2)] == [11, 12]
    assert log.since(12) == [] and log.get(7) is None and log.get(10).seq == 10
    with pytest.raises(ValueError):
        DecisionLog(size=0)


def test_the_page_update_sends_new_decisions_and_again_once_answered():
    d, obs, _, store, sched = make()
    ask(d)
    reader = Reader(obs.log, store, sched, 2.0, cursor=None)
    first = reader.update()
    assert [x["seq"] for x in first["decisions"]] == [1] and first["config"]["profiles"]["default"]["scorers"]
    assert {e["address"] for e in first["pool"]} == {"10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"}
    body = json.dumps({"model": "m", "prompt": "q"}).encode()
    dec = d.decide(HEADERS, "/v1/completions", body, None)
    second = reader.update()
    assert [x["seq"] for x in second["decisions"]] == [2] and second["decisions"][0]["done"] is False
    assert "config" not in second
    d.response_started(dec, 200, False)
    d.done(dec, 200)
    third = reader.update()
    assert [x["seq"] for x in third["decisions"]] == [2] and third["decisions"][0]["done"] is True
    assert reader.update()["decisions"] == []
    # a page that reconnects with a cursor from before epp restarted starts over
    assert [x["seq"] for x in Reader(obs.log, store, sched, 2.0, cursor=99).update()["decisions"]] == [1, 2]
    st = third["stats"]
    assert st["overhead_ms"]["p50"] > 0 and st["window"] == 2 and st["hit_rate"]["reported"] == pytest.approx(0.64)


# ---------------------------------------------------------------- pool and plugin state

def test_pool_view_has_what_the_page_shows():
    d, obs, _, store, sched = make()
    ask(d)
    view = pool_view(store, sched, 2.0)
    assert [e["address"] for e in view] == ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]
    e = view[1]
    assert e["queue"] == 1 and e["ready"] and e["metrics_fresh"] and e["in_flight"] == 0
    assert e["metrics_age_s"] >= 0 and e["kv_events"] is None and e["role"] == ""


def test_pool_view_shows_kv_event_publishers_from_the_precise_producer():
    cfg = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: precise-prefix-cache-producer}
- {type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}}
"""
    sched = from_config(load(cfg))
    store = EndpointStore()
    store.replace([endpoint(1), endpoint(2)])
    producer = sched.plugins_of(__import__("epp.scheduling.framework", fromlist=["KVEventStatus"]).KVEventStatus)[0]

    class Sub:   # the subscriber's view, as KVEventSubscriber.status() gives it
        def status(self):
            return {"10.0.0.1:8000": {"messages": 7, "gaps": 1, "resets": 0, "replaying": False, "last_seq": 6}}
    producer.subscriber = Sub()
    view = {e["address"]: e for e in pool_view(store, sched, 2.0)}
    assert view["10.0.0.1:8000"]["kv_events"]["messages"] == 7 and view["10.0.0.2:8000"]["kv_events"] is None
    state = plugin_state(sched.plugins)["plugins"]["precise-prefix-cache-producer"]["state"]
    assert state["subscribers"] == ["10.0.0.1:8000"] and state["totalSubscribers"] == 1 and state["maxSubscribers"] == 100


def test_plugin_state_has_upstreams_shape():
    d, *_ = make()
    dec = ask(d)
    doc = plugin_state(d.scheduler.plugins)
    assert doc["timestamp"].endswith("Z") and "T" in doc["timestamp"]
    plugins = doc["plugins"]
    assert plugins["queue-scorer"] == {"name": "queue-scorer", "type": "queue-scorer", "message": UNSUPPORTED}
    approx = plugins["approx-prefix-cache-producer"]
    assert approx["type"] == "approx-prefix-cache-producer"
    st = approx["state"]
    assert st["totalPods"] == 1 and st["maxPods"] == 100
    assert st["pods"][0]["pod"] == dec.destination and st["pods"][0]["blocks"] > 0
    json.dumps(doc)    # JSON-ready


def test_a_failing_state_dumper_is_reported_not_raised():
    from epp.scheduling.framework import Plugin, StateDumper

    class Bad(Plugin, StateDumper):
        type_name = "bad"

        def dump_state(self):
            raise RuntimeError("boom")
    doc = plugin_state([Bad()])
    assert doc["plugins"]["bad"]["message"] == "failed to dump plugin state: boom"


# ---------------------------------------------------------------- the admin app (WSGI)

@pytest.fixture
def loop_thread():
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    loop.close()


def call(app, path, query="", headers=None):
    env = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": "GET", **(headers or {})}
    setup_testing_defaults(env)
    got = {}

    def start_response(status, hdrs):
        got["status"], got["headers"] = status, dict(hdrs)
    body = app(env, start_response)
    return got["status"], got["headers"], body


def test_debug_decisions_pages_with_since_and_limit(loop_thread):
    d, obs, reg, store, sched = make(size=4)
    for _ in range(6):
        ask(d)
    app = AdminApp(LoopBridge(loop_thread), store, sched, 2.0, obs.log, metrics_registry=reg, ui=True)
    status, hdrs, body = call(app, "/debug/decisions")
    doc = json.loads(b"".join(body))
    assert status == "200 OK" and hdrs["Content-Type"] == "application/json"
    assert [x["seq"] for x in doc["decisions"]] == [3, 4, 5, 6] and doc["cursor"] == 6 and doc["buffer"] == 4
    doc = json.loads(b"".join(call(app, "/debug/decisions", "since=1&limit=2")[2]))
    assert [x["seq"] for x in doc["decisions"]] == [3, 4] and doc["cursor"] == 4 and doc["missed"] == 1
    doc = json.loads(b"".join(call(app, "/debug/decisions", f"since={doc['cursor']}")[2]))
    assert [x["seq"] for x in doc["decisions"]] == [5, 6] and doc["cursor"] == 6
    doc = json.loads(b"".join(call(app, "/debug/decisions", "since=6")[2]))
    assert doc["decisions"] == [] and doc["cursor"] == 6
    assert call(app, "/debug/decisions", "since=abc")[0] == "400 Bad Request"
    # the rest of the admin surface
    assert json.loads(b"".join(call(app, "/debug/pool")[2]))["endpoints"][0]["address"] == "10.0.0.1:8000"
    assert "plugins" in json.loads(b"".join(call(app, "/debug/plugins/state")[2]))
    status, _, body = call(app, "/metrics")
    assert status.startswith("200") and b"epp_prefix_cache_prediction_error_tokens" in b"".join(body)
    assert call(app, "/nope")[0] == "404 Not Found"


def test_without_recording_there_is_no_page_and_the_decision_api_says_how_to_get_one(loop_thread):
    d, obs, reg, store, sched = make(record=False)
    app = AdminApp(LoopBridge(loop_thread), store, sched, 2.0, obs.log, metrics_registry=reg, ui=True)
    status, _, body = call(app, "/debug/decisions")
    assert status == "404 Not Found" and b"--ui" in b"".join(body)
    assert call(app, "/ui")[0] == "404 Not Found"
    assert call(app, "/debug/pool")[0] == "200 OK"      # pool and plugin state need no recording


def test_the_page_ships_everything_it_loads(loop_thread):
    d, obs, reg, store, sched = make()
    app = AdminApp(LoopBridge(loop_thread), store, sched, 2.0, obs.log, ui=True)
    for path, ctype in (("/ui", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")):
        status, hdrs, body = call(app, path)
        text = b"".join(body).decode()
        assert status == "200 OK" and hdrs["Content-Type"].startswith(ctype), path
        # no CDN, no font service: the page works in a closed network
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path
    html = b"".join(call(app, "/ui")[2]).decode()
    assert 'src="/ui/app.js"' in html and 'href="/ui/app.css"' in html
    assert call(app, "/")[0] == "302 Found"
    assert call(app, "/metrics")[0] == "404 Not Found"     # the --ui-port app has no /metrics


def test_the_event_stream_sends_updates_and_resumes_from_last_event_id(loop_thread):
    d, obs, reg, store, sched = make()
    for _ in range(3):
        ask(d)
    app = AdminApp(LoopBridge(loop_thread), store, sched, 2.0, obs.log, ui=True, interval=0.01)
    status, hdrs, body = call(app, "/ui/events", headers={"HTTP_LAST_EVENT_ID": "2"})
    assert status == "200 OK" and hdrs["Content-Type"] == "text/event-stream"
    it = iter(body)
    assert next(it).startswith(b"retry:")
    event = next(it).decode()
    lines = dict(line.split(": ", 1) for line in event.strip().split("\n"))
    assert lines["id"] == "3"
    doc = json.loads(lines["data"])
    assert [x["seq"] for x in doc["decisions"]] == [3] and len(doc["pool"]) == 3
    app.closing.set()       # the server stopping ends every open stream
    assert list(it) == []
    assert app._streams == 0


def test_the_web_view_is_off_unless_asked_for():
    a = flags.parse(["--endpoints-file", "f"])
    assert (a.ui, a.ui_port, a.ui_show_prompts, a.ui_decisions) == (False, 0, False, 1000)
    b = flags.parse(["--endpoints-file", "f", "--ui", "--ui-port", "8082", "--ui-show-prompts=true", "--ui-decisions", "50"])
    assert (b.ui, b.ui_port, b.ui_show_prompts, b.ui_decisions) == (True, 8082, True, 50)
    with pytest.raises(flags.FlagError):      # a validation error: exit 1, as upstream's
        flags.parse(["--endpoints-file", "f", "--ui-decisions", "0"])
    with pytest.raises(flags.FlagError):
        flags.parse(["--endpoints-file", "f", "--ui-port", "9090"])     # the metrics port's default
