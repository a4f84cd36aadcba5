"""Header and metadata names of the Endpoint Picker Protocol (GIE) and llm-d: one home for every layer
(transports, request control, plugins, the sidecar)."""
from __future__ import annotations

# request routing, set by the EPP (and removed from what clients send: a client must never steer traffic)
DEST = "x-gateway-destination-endpoint"                  # the picked "ip:port" (or an ordered fallback list)
DEST_SERVED = "x-gateway-destination-endpoint-served"    # the proxy's report of the endpoint that answered
SUBSET_KEY = "x-gateway-destination-endpoint-subset"     # the proxy's hint: the endpoints it may route to
PREFILLER = "x-prefiller-host-port"                      # P/D: the prefill pod, for the decode pod's sidecar
ROUTING = (DEST, PREFILLER, SUBSET_KEY, DEST_SERVED)

# dynamic metadata namespaces
LB_NS = "envoy.lb"
SUBSET_NS = "envoy.lb.subset_hint"

# request headers the EPP reads
OBJECTIVE = "x-gateway-inference-objective"              # names an InferenceObjective (its priority); llm-d's alias
OBJECTIVE_LLMD = "x-llm-d-inference-objective"           # the same, llm-d's current name (read first)
FAIRNESS_ID = "x-llm-d-inference-fairness-id"            # flow control: the tenant (flow) of the request
FAIRNESS_ID_OLD = "x-gateway-inference-fairness-id"      # its older (GIE) name, read when the first is absent
DEFAULT_FAIRNESS_ID = "default-flow"                     # the flow of a request that names none
REWRITE = "x-gateway-model-name-rewrite"                 # the model name the server is asked for
REQUEST_ID = "x-request-id"

# on an answer the EPP gives itself (ImmediateResponse): why the request was not served (flow control,
# no endpoints); a client's own value is removed from what it sends
DROPPED_REASON = "x-llm-d-request-dropped-reason"
# control headers read by the EPP and removed before the request goes to the model server
CONTROL = (OBJECTIVE_LLMD, OBJECTIVE, FAIRNESS_ID, FAIRNESS_ID_OLD, DROPPED_REASON)

# ours: the decision explained, on the response (--decision-header)
DECISION = "x-epp-decision"
