"""token-producer: the prompt as token ids, computed once per request for the plugins that count in
tokens (approximate prefix hashing, context length).

Backends: `estimate` (upstream's default: no tokenizer, ~4 bytes per token) and, our addition,
`local: {path: DIR}`, a HuggingFace tokenizer.json read from disk, so prefix blocks are real token
blocks (GIE #2330). Upstream's `vllm` backend (the model server's render endpoints) does I/O per
request and comes with precise prefix routing.
"""
from __future__ import annotations

import os
import re
from array import array
from collections import OrderedDict
from typing import Any

from ..framework import Plugin, params_error, register

STATE_TOKENS = "token-producer/ids"
CHUNK_CHARS = 2048          # text is tokenized in pieces of about this size, each cached
CACHE_PIECES = 16384        # ~32 MB of text at most; shared prompt prefixes stay warm
# a piece ends before a single space between two non-spaces: pre-tokenizers start a word with its
# space, so tokenizing the pieces one by one gives the tokens of the whole (checked at load)
_CUT = re.compile(r"(?<=\S) (?=\S)")


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
        self._pieces: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self.chunked = self.tokenizer is not None and self._chunking_is_exact()

    @property
    def real(self) -> bool:
        return self.tokenizer is not None

    def tokens(self, state: dict, request: Any, limit: int = 0) -> list[int] | None:
        """Token ids of the prompt, at least `limit` of them when limit > 0 (a consumer that only
        looks at the head of the prompt need not pay for the rest); None with the estimate backend
        (callers hash the bytes directly)."""
        if self.tokenizer is None:
            return None
        st = state.get(STATE_TOKENS)
        if st is None:
            st = state[STATE_TOKENS] = self._start(request)
        ids, text, pos = st
        if text is not None and (limit <= 0 or len(ids) < limit):
            pos = self._advance(ids, text, pos, limit)
            st[2] = pos
            if pos >= len(text):
                st[1] = None
        return ids

    def _start(self, request: Any) -> list:
        body = request.body or {}
        if request.api == "completions":
            p = body.get("prompt")
            if isinstance(p, list) and p and all(isinstance(t, int) for t in p):
                return [list(p), None, 0]  # already token ids
            if isinstance(p, list) and all(isinstance(s, str) for s in p):
                p = "".join(p)
            text = p if isinstance(p, str) else request.prompt.decode("utf-8", "replace")
        elif request.api == "chat":
            text = _chat_text(body)
        else:
            text = request.prompt.decode("utf-8", "replace")
        if not self.chunked:
            return [self.tokenizer.encode(text, add_special_tokens=False).ids, None, 0]
        return [[], text, 0]

    def _advance(self, ids: list[int], text: str, pos: int, limit: int) -> int:
        n = len(text)
        cache = self._pieces
        while pos < n and (limit <= 0 or len(ids) < limit):
            m = _CUT.search(text, pos + CHUNK_CHARS) if pos + CHUNK_CHARS < n else None
            end = m.start() if m else n
            piece = text[pos:end]
            got = cache.get(piece)
            if got is None:
                got = cache[piece] = tuple(self.tokenizer.encode(piece, add_special_tokens=False).ids)
                if len(cache) > CACHE_PIECES:
                    cache.popitem(last=False)
            else:
                cache.move_to_end(piece)
            ids.extend(got)
            pos = end
        return pos

    def _chunking_is_exact(self) -> bool:
        sample = ("Routing keeps a prompt's prefix where its cache is. " * 90 + "x  y\n\nz, 42 ünïcode 日本 ") * 3
        whole = self.tokenizer.encode(sample, add_special_tokens=False).ids
        self.chunked = True
        ids: list[int] = []
        self._advance(ids, sample, 0, 0)
        self._pieces.clear()
        return ids == whole

    def token_count(self, state: dict, request: Any) -> int:
        ids = self.tokens(state, request, 0)
        return len(ids) if ids is not None else (len(request.prompt) + 3) // 4


def ids_bytes(ids: list[int]) -> bytes:
    """Token ids as little-endian uint32s: what the block hash runs over."""
    a = array("I", ids)
    if a.itemsize != 4 or array("I", [1]).tobytes()[0] != 1:  # pragma: no cover - exotic platforms
        return b"".join(i.to_bytes(4, "little") for i in ids)
    return a.tobytes()
