"""The P/D routing sidecar (`epp-sidecar`): runs in each decode pod in front of vLLM, as llm-d's
routing sidecar does.

A completion request that carries `x-prefiller-host-port` (set by the EPP's P/D profile handler) is
split in two legs: a one-token prefill on the named prefill pod, whose response hands over the KV
cache location (`kv_transfer_params`, vLLM's NixlConnector contract), then the real request on the
local vLLM, which pulls that KV instead of prefilling. Everything else goes to the local vLLM unchanged.

Layers: options (flags, as upstream's), allowlist (SSRF protection against the pool's members, from
an endpoints file or the InferencePool), usage (the cached_tokens rewrite), proxy (the aiohttp
server), cli (the console script). Imports epp.datalayer and epp.flags only.
"""
