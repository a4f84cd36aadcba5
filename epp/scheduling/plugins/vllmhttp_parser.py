"""vllmhttp-parser: vLLM's token-in API, /inference/v1/generate: a non-empty token_ids list, the
output cap in sampling_params.max_tokens; responses are read as OpenAI's."""
from __future__ import annotations

from ..framework import Parser, register


@register
class VllmHTTPParser(Parser):
    type_name = "vllmhttp-parser"
    routes = {"inference/v1/generate": "generate"}
