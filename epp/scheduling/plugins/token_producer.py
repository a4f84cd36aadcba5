"""token-producer: the prompt as token ids, computed once per request for the plugins that count in
tokens (approximate prefix hashing, context length).

Backends: `estimate` (upstream's default: no tokenizer, ~4 bytes per token) and, our addition,
`local: {path: DIR}`, a HuggingFace tokenizer.json read from disk, so prefix blocks are real token
blocks (GIE #2330). Upstream's `vllm` backend (the model server's render endpoints) does I/O per
request and comes with precise prefix routing.
"""
from __future__ import annotations

import os
from array import array
from typing import Any

from ..framework import Plugin, params_error, register

STATE_TOKENS = "token-producer/ids"


def _chat_text(body: dict) -> str:
    """Chat messages as text: role and content of each message (tools first), as upstream walks them.
    A real chat template would add its markers; for prefix affinity only consistency matters."""
    parts = []
    tools = body.get("tools")
    if tools:
        import orjson
        parts.append(orjson.dumps(tools).decode())
    for m in body.get("messages") or ():
        if not isinstance(m, dict):
            continue
        parts.append(str(m.get("role", "")))
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(p.get("text", "") for p in c if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "\n".join(parts)


@register
class TokenProducer(Plugin):
    type_name = "token-producer"
    aliases = ("tokenizer",)

    def __init__(self, name: str | None = None, modelName: str = "", estimate: dict | None = None,
                 local: dict | None = None, vllm: dict | None = None) -> None:
        super().__init__(name)
        self.model_name = modelName
        if vllm is not None:
            raise params_error(self.type_name, "the vllm backend (render endpoints) is not available yet; "
                                               "use local: {path: DIR} with the model's tokenizer.json, or estimate")
        self.tokenizer = None
        if local is not None:
            if not isinstance(local, dict) or set(local) - {"path"} or not isinstance(local.get("path"), str):
                raise params_error(self.type_name, "local must be {path: <directory or tokenizer.json>}")
            path = local["path"]
            if os.path.isdir(path):
                path = os.path.join(path, "tokenizer.json")
            if not os.path.isfile(path):
                raise params_error(self.type_name, f"local.path: no tokenizer.json at {path}")
            from tokenizers import Tokenizer
            try:
                self.tokenizer = Tokenizer.from_file(path)
            except Exception as e:  # the library raises its own exception types for a bad file
                raise params_error(self.type_name, f"local.path: cannot load {path}: {e}") from None

    @property
    def real(self) -> bool:
        return self.tokenizer is not None

    def tokens(self, state: dict, request: Any) -> list[int] | None:
        """Token ids of the prompt; None with the estimate backend (callers use the bytes directly)."""
        if self.tokenizer is None:
            return None
        ids = state.get(STATE_TOKENS)
        if ids is None:
            ids = state[STATE_TOKENS] = self._encode(request)
        return ids

    def _encode(self, request: Any) -> list[int]:
        body = request.body or {}
        if request.api == "completions":
            p = body.get("prompt")
            if isinstance(p, list) and p and all(isinstance(t, int) for t in p):
                return p  # already token ids
            if isinstance(p, list) and all(isinstance(s, str) for s in p):
                p = "".join(p)
            text = p if isinstance(p, str) else request.prompt.decode("utf-8", "replace")
        elif request.api == "chat":
            text = _chat_text(body)
        else:
            text = request.prompt.decode("utf-8", "replace")
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def token_count(self, state: dict, request: Any) -> int:
        ids = self.tokens(state, request)
        return len(ids) if ids is not None else (len(request.prompt) + 3) // 4


def ids_bytes(ids: list[int]) -> bytes:
    """Token ids as little-endian uint32s: what the block hash runs over."""
    a = array("I", ids)
    if a.itemsize != 4 or array("I", [1]).tobytes()[0] != 1:  # pragma: no cover - exotic platforms
        return b"".join(i.to_bytes(4, "little") for i in ids)
    return a.tobytes()
