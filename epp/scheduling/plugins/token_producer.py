"""token-producer: the prompt as token ids, computed once per request for the plugins that count in
tokens (approximate prefix hashing, context length).

Backends: `estimate` (upstream's default: no tokenizer, ~4 bytes per token) and, our addition,
`local: {path: DIR}`, a HuggingFace tokenizer.json read from disk, so prefix blocks are real token
blocks (GIE #2330). Upstream's `vllm` backend (the model server's render endpoints) does I/O per
request and comes with precise prefix routing.
"""
from __future__ import annotations

import logging
import os
import re
from array import array
from collections import OrderedDict
from typing import Any

from ..framework import Plugin, params_error, register

log = logging.getLogger(__name__)

STATE_TOKENS = "token-producer/ids"
CHUNK_CHARS = 2048          # text is tokenized in pieces of about this size, each cached
CACHE_PIECES = 16384        # ~32 MB of text at most; shared prompt prefixes stay warm
# a piece ends before a single space between two non-spaces: pre-tokenizers start a word with its
# space, so tokenizing the pieces one by one gives the tokens of the whole (checked at load)
_CUT = re.compile(r"(?<=\S) (?=\S)")


def _load_template(directory: str):
    """The model's chat template (chat_template.jinja, or tokenizer_config.json's chat_template) in a
    sandboxed Jinja environment, as HuggingFace renders it; None when the directory has none."""
    import json
    text, cfg = None, {}
    cfg_path = os.path.join(directory, "tokenizer_config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    path = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    elif isinstance(cfg.get("chat_template"), str):
        text = cfg["chat_template"]
    if text is None:
        return None, {}
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception

    def token(v):
        return v.get("content") if isinstance(v, dict) else v
    specials = {k: token(cfg.get(k)) or "" for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    return env.from_string(text), specials


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
        self.template, self.specials = None, {}
        self.prefix_ids: list[int] = []
        self.failures = 0  # requests whose prompt could not be tokenized (callers fall back)
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
            self.template, self.specials = _load_template(os.path.dirname(path))
            # what the tokenizer adds around a plain prompt (e.g. Llama's BOS), as vLLM's completions do
            self.prefix_ids = self.tokenizer.encode("", add_special_tokens=True).ids
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
            try:
                st = self._start(request)
            except Exception as e:  # a template that rejects the messages, odd content: never fail the request
                self.failures += 1
                log.debug("cannot tokenize request %s: %s", getattr(request, "request_id", "?"), e)
                st = [None, None, 0]
            state[STATE_TOKENS] = st
            request.tokenization = st
        ids, text, pos = st
        if ids is None:
            return None
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
            if self.prefix_ids:
                if not self.chunked:
                    return [self.tokenizer.encode(text, add_special_tokens=True).ids, None, 0]
                return [list(self.prefix_ids), text, 0]
        elif request.api == "chat":
            text = self.render_chat(body)
        else:
            text = request.prompt.decode("utf-8", "replace")
        if not self.chunked:
            return [self.tokenizer.encode(text, add_special_tokens=False).ids, None, 0]
        return [[], text, 0]

    def render_chat(self, body: dict) -> str:
        """The chat as the model server renders it: the model's template with the generation prompt,
        tokenized without adding special tokens again (as vLLM does); the plain role/content walk
        when the tokenizer directory has no template."""
        if self.template is None:
            return _chat_text(body)
        kw = dict(self.specials)
        if body.get("tools"):
            kw["tools"] = body["tools"]
        return self.template.render(messages=body.get("messages") or [], add_generation_prompt=True, **kw)

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
        """Tokenizing in pieces must give the tokens of the whole: checked on plain text and on a
        rendered chat (special tokens included); any difference turns piecewise tokenization off."""
        sample = ("Routing keeps a prompt's prefix where its cache is. " * 90 + "x  y\n\nz, 42 ünïcode 日本 ") * 3
        samples = [sample]
        if self.template is not None:
            try:
                samples.append(self.render_chat({"messages": [{"role": "system", "content": sample},
                                                              {"role": "user", "content": sample[::-1]}]}))
            except Exception:
                return False
        self.chunked = True
        try:
            for text in samples:
                ids: list[int] = []
                self._advance(ids, text, 0, 0)
                if ids != self.tokenizer.encode(text, add_special_tokens=False).ids:
                    return False
            return True
        finally:
            self._pieces.clear()

    def complete_count(self, request: Any) -> int | None:
        """The prompt's full token count from a request tokenized earlier (finishing the work the
        scheduler skipped); None if it was not tokenized."""
        st = request.tokenization
        if not st or st[0] is None:
            return None
        if st[1] is not None:
            st[2] = self._advance(st[0], st[1], st[2], 0)
            st[1] = None
        return len(st[0])

    def token_count(self, state: dict, request: Any) -> int:
        ids = self.tokens(state, request, 0)
        return len(ids) if ids is not None else (len(request.prompt) + 3) // 4


def ids_bytes(ids: list[int]) -> bytes:
    """Token ids as little-endian uint32s: what the block hash runs over."""
    a = array("I", ids)
    if a.itemsize != 4 or array("I", [1]).tobytes()[0] != 1:  # pragma: no cover - exotic platforms
        return b"".join(i.to_bytes(4, "little") for i in ids)
    return a.tobytes()
