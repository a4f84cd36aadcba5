"""Request control as llm-d router v0.10 does it: parsers route paths, x-llm-d-* headers read first,
endpoint scores for the proxy, admission refusals, and the llm_d_epp_* metrics (capped labels)."""
import json
import time

import pytest
from prometheus_client import CollectorRegistry

from epp.datalayer.store import EndpointStore
from epp.metrics import BoundedLabel, EPPMetrics
from epp.requestcontrol.director import Director
from epp.requestcontrol.errors import EPPError
from epp.scheduling.config import load
from epp.scheduling.scheduler import from_config
from epp.server import protocol as p
from epp.server.stream import RequestStream

from .helpers import director, endpoint, req_body, req_headers, resp_body, resp_headers

HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"


def director_for(body: str, eps, **kw) -> Director:
    cfg = load(HEAD + body, "t", allow_experimental=True)
    store = EndpointStore()
    store.replace(eps)
    m = EPPMetrics(CollectorRegistry())
    return Director(store, from_config(cfg, m), m, parsers=cfg.parsers, **kw)


def call(d: Director, path: str, body: dict | bytes | None, headers=None):
    raw = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    return d.decide(dict(headers or {}), path, raw, None)


@pytest.mark.parametrize("path, body", [
    ("/v1/embeddings", {"model": "m", "input": "x"}),
    ("/v1/conversations", {"model": "m", "items": [{"type": "message"}]}),
    ("/v1/images/generations", {"model": "m", "prompt": "a cat"}),
    ("/v1/chat/completions/render", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/completions/render?x=1", {"model": "m", "prompt": "hi"}),
    ("/openai/deployments/d/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/messages/count_tokens", b"anything: not even JSON"),       # forwarded as it is
    ("/inference/v1/generate", {"model": "m", "token_ids": [1, 2, 3], "sampling_params": {"max_tokens": 4}}),
])
def test_default_parsers_route_upstream_paths(path, body):
    d = director([endpoint(1)])
    assert call(d, path, body).destination == "10.0.0.1:8000"


@pytest.mark.parametrize("path, body, fragment", [
    ("/v1/embeddings", {"model": "m", "input": ""}, "'input' is required and must not be empty"),
    ("/v1/messages", {"model": "m", "messages": []}, "'messages' must have at least one message"),
    ("/inference/v1/generate", {"model": "m", "token_ids": []}, "'token_ids' is required"),
    ("/v1/models/x", {"model": "m"}, "no parser registered matching path suffix for: /v1/models/x"),
])
def test_each_grammar_refuses_what_upstream_refuses(path, body, fragment):
    with pytest.raises(EPPError) as e:
        call(director([endpoint(1)]), path, body)
    assert e.value.status == 400 and fragment in e.value.message


def test_a_passthrough_config_routes_any_path_and_body():
    d = director_for("plugins: [{type: passthrough-parser}, {type: queue-scorer}]\n"
                     "requestHandler: {parsers: [{pluginRef: passthrough-parser}]}\n", [endpoint(1)])
    assert call(d, "/anything/at/all", b"\x00 not json").destination == "10.0.0.1:8000"
    assert not d.body_required("POST", "/v1/completions")           # nothing to parse
    only_openai = director_for("requestHandler: {parsers: [{pluginRef: openai-parser}]}\n", [endpoint(1)])
    with pytest.raises(EPPError, match="no parser registered matching path suffix"):
        call(only_openai, "/v1/messages", {"model": "m", "messages": [{"role": "user"}]})


def test_llm_d_headers_are_read_before_the_gateway_ones():
    d = director([endpoint(1)], objectives={"batch": -1, "chat": 5})
    body = {"model": "m", "prompt": "hi"}
    both = {"x-llm-d-inference-objective": "chat", "x-gateway-inference-objective": "batch",
            "x-llm-d-model-name-rewrite": "new", "x-gateway-model-name-rewrite": "old"}
    dec = call(d, "/v1/completions", body, both)
    assert dec.request.priority == 5 and dec.request.target_model == "new"
    dec = call(d, "/v1/completions", body, {"x-gateway-inference-objective": "batch",
                                            "x-gateway-model-name-rewrite": "old"})
    assert dec.request.priority == -1 and dec.request.target_model == "old"


def test_endpoint_scores_go_to_the_proxy_only_when_asked():
    eps = [endpoint(1, waiting=0), endpoint(2, waiting=4)]
    body = "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: d, plugins: [{pluginRef: queue-scorer, weight: 2}]}]\n"
    dec = call(director_for(body, eps, emit_scores=True), "/v1/completions", {"model": "m", "prompt": "x"})
    assert dec.scores == {"10.0.0.1:8000": 2.0, "10.0.0.2:8000": 0.0}
    md = p.lb_metadata(dec.destination, dec.scores)
    lb = md.fields["envoy.lb"].struct_value.fields
    assert lb["x-gateway-destination-endpoint"].string_value == "10.0.0.1:8000"
    scores = lb["x-gateway-destination-endpoint-scores"].struct_value.fields
    assert {k: v.number_value for k, v in scores.items()} == dec.scores
    plain = call(director_for(body, eps), "/v1/completions", {"model": "m", "prompt": "x"})
    assert plain.scores is None
    assert "x-gateway-destination-endpoint-scores" not in p.lb_metadata(plain.destination).fields["envoy.lb"].struct_value.fields


def test_the_scores_ride_on_the_stream_reply():
    eps = [endpoint(1)]
    d = director_for("plugins: [{type: queue-scorer}]\n", eps, emit_scores=True)
    s = RequestStream(d, 1 << 20)
    s.on_message(req_headers())
    out = s.on_message(req_body(json.dumps({"model": "m", "prompt": "x"}).encode()))
    lb = out[0].dynamic_metadata.fields["envoy.lb"].struct_value.fields
    assert lb["x-gateway-destination-endpoint-scores"].struct_value.fields["10.0.0.1:8000"].number_value == 1.0


def test_an_admitter_refusal_is_a_500_as_upstream():
    # saturation 0.6: under the detector's limit, past the admitter's curve (0.6^5 x 300 > 1)
    eps = [endpoint(1, waiting=3)]
    d = director_for("plugins: [{type: probabilistic-admitter}, {type: queue-scorer}]\n", eps, objectives={"low": -1})
    with pytest.raises(EPPError) as e:
        call(d, "/v1/completions", {"model": "m", "prompt": "x"}, {"x-llm-d-inference-objective": "low"})
    assert e.value.status == 500 and "request cannot be admitted: probabilistic-admitter: rejected" in e.value.message
    assert call(d, "/v1/completions", {"model": "m", "prompt": "x"}).destination   # priority 0: admitted


def test_the_served_endpoint_reaches_the_conformance_verifier():
    from google.protobuf.struct_pb2 import Struct
    d = director_for("plugins: [{type: destination-endpoint-served-verifier}, {type: queue-scorer}]\n", [endpoint(1)])
    s = RequestStream(d, 1 << 20)
    s.on_message(req_headers())
    s.on_message(req_body(json.dumps({"model": "m", "prompt": "x"}).encode()))
    msg = resp_headers()
    md = Struct()
    md.update({"x-gateway-destination-endpoint-served": "10.0.0.1:8000"})
    msg.metadata_context.filter_metadata["envoy.lb"].CopyFrom(md)
    out = s.on_message(msg)
    sets = {o.header.key: o.header.raw_value.decode()
            for o in out[0].response_headers.response.header_mutation.set_headers}
    assert sets["x-conformance-test-served-endpoint"] == "10.0.0.1:8000"


def test_llm_d_metrics_beside_the_legacy_names():
    d = director([endpoint(1)])
    s = RequestStream(d, 1 << 20)
    raw = json.dumps({"model": "m", "prompt": "x", "stream": True}).encode()
    s.on_message(req_headers(extra={"x-llm-d-inference-fairness-id": "team-a"}))
    s.on_message(req_body(raw))
    s.on_message(resp_headers(ctype="text/event-stream"))
    time.sleep(0.05)     # vLLM's headers come at once; TTFT runs to the first body byte, as upstream's
    s.on_message(resp_body(b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}\n\n',
                           eos=True))
    reg = d.metrics.registry
    mfp = {"model_name": "m", "target_model_name": "m", "fairness_id": "team-a", "priority": "0"}
    assert reg.get_sample_value("llm_d_epp_request_ttft_seconds_sum", {**mfp, "streaming": "true"}) >= 0.05
    assert reg.get_sample_value("llm_d_epp_request_total", mfp) == 1
    assert reg.get_sample_value("llm_d_epp_request_size_bytes_sum", mfp) == len(raw)
    assert reg.get_sample_value("llm_d_epp_request_output_tokens_sum", mfp) == 4
    assert reg.get_sample_value("llm_d_epp_request_ntpot_seconds_count", mfp) == 1
    assert reg.get_sample_value("llm_d_epp_request_streaming_tpot_seconds_count", mfp) == 1
    assert reg.get_sample_value("llm_d_epp_request_ttft_seconds_count", {**mfp, "streaming": "true"}) == 1
    assert reg.get_sample_value("llm_d_epp_request_running", mfp) == 0
    assert reg.get_sample_value("llm_d_epp_response_size_bytes_count", mfp) == 1
    assert reg.get_sample_value("llm_d_epp_request_processing_duration_seconds_count") == 1
    assert reg.get_sample_value("llm_d_epp_scheduler_e2e_duration_seconds_count") == 1
    assert reg.get_sample_value("inference_extension_scheduler_e2e_duration_seconds_count") == 1
    assert reg.get_sample_value("llm_d_epp_info", {"commit": "unknown", "build_ref": "epp-python"}) == 1
    with pytest.raises(EPPError):
        d.decide({}, "/v1/completions", b"{", None)
    assert reg.get_sample_value("llm_d_epp_request_error_total", {
        "model_name": "", "target_model_name": "", "fairness_id": "default-flow", "priority": "0",
        "error_code": "BadRequest"}) == 1
    assert reg.get_sample_value("inference_objective_request_error_total", {
        "model_name": "", "target_model_name": "", "error_code": "BadRequest"}) == 1


def test_request_derived_labels_are_capped():
    cap = BoundedLabel(limit=3)
    cap.pin("rewritten")
    assert [cap(v) for v in ("a", "b", "c", "d", "a", "rewritten", "")] == ["a", "b", "c", "other", "a", "rewritten", ""]
