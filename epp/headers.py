"""Header and metadata names of the Endpoint Picker Protocol (GIE) and llm-d: one home for every layer
(transports, request control, plugins, the sidecar)."""
from __future__ import annotations

# request routing, set by the EPP (and removed from what clients send: a client must never steer traffic)
DEST = "x-gateway-destination-endpoint"                  # the picked "ip:port" (or an ordered fallback list)
DEST_SERVED = "x-gateway-destination-endpoint-served"    # the proxy's report of the endpoint that answered
SUBSET_KEY = "x-gateway-destination-endpoint-subset"     # the proxy's hint: the endpoints it may route to
PREFILLER = "x-prefiller-host-port"                      # P/D: the prefill pod, for the decode pod's sidecar
DATA_PARALLEL = "x-data-parallel-host-port"              # data-parallel-profile-handler: the rank endpoint
KV_CACHE_SOURCE = "x-kv-cache-source-host-port"          # p2p-source-producer: where to pull cached blocks from
ROUTING = (DEST, PREFILLER, SUBSET_KEY, DEST_SERVED, DATA_PARALLEL, KV_CACHE_SOURCE)

# with --emit-endpoint-scores: envoy.lb metadata key of a struct "ip:port" -> score of every scored candidate
DEST_SCORES = "x-gateway-destination-endpoint-scores"

# dynamic metadata namespaces
LB_NS = "envoy.lb"
SUBSET_NS = "envoy.lb.subset_hint"

# request headers the EPP reads: llm-d's names first, the x-gateway-* ones (GIE's, deprecated in llm-d)
# when the llm-d one is absent
OBJECTIVE = "x-llm-d-inference-objective"                # names an InferenceObjective (its priority)
OBJECTIVE_OLD = "x-gateway-inference-objective"
REWRITE = "x-llm-d-model-name-rewrite"                   # the model name the server is asked for
REWRITE_OLD = "x-gateway-model-name-rewrite"
REQUEST_ID = "x-request-id"
# flow control: the tenant (flow) of the request, llm-d's name first; also a metric label
FAIRNESS_ID = "x-llm-d-inference-fairness-id"
FAIRNESS_ID_OLD = "x-gateway-inference-fairness-id"
DEFAULT_FAIRNESS_ID = "default-flow"                     # the flow of a request that names none
PROFILE = "epp-profile"                                  # header-profile-handler's default header
SESSION_TOKEN = "x-session-token"                        # session affinity: base64 "namespace/name" of the pod
SESSION_ID = "x-session-id"                              # session affinity (session_id strategy)
TEST_ENDPOINT_SELECTION = "test-epp-endpoint-selection"  # conformance: endpoints the test filter keeps
CONFORMANCE_SERVED = "x-conformance-test-served-endpoint"  # conformance: the endpoint that served, on the response

# on every response, as upstream's EPP adds it (GIE and llm-d)
WENT_INTO_RESP_HEADERS = "x-went-into-resp-headers"

# on an answer the EPP gives itself (ImmediateResponse): why the request was not served (flow control,
# no endpoints); a client's own value is removed from what it sends
DROPPED_REASON = "x-llm-d-request-dropped-reason"
# control headers read by the EPP and removed before the request goes to the model server
CONTROL = (OBJECTIVE, OBJECTIVE_OLD, FAIRNESS_ID, FAIRNESS_ID_OLD, DROPPED_REASON)

# ours: the decision explained, on the response (--decision-header)
DECISION = "x-epp-decision"
