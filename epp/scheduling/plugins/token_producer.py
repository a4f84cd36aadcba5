"""token-producer: the prompt as token ids, computed once per request for the plugins that count in
tokens (approximate prefix hashing, context length).

Backends, exactly one, chosen as llm-d router v0.10 chooses them:
- `estimate` (the default when nothing is set): no tokenizer, ~4 bytes per token. Its image/video
  settings are checked as upstream's; they size multimodal placeholders, which this EPP does not count.
- `vllm: {url, timeout, mmTimeout}`, also selected by `modelName` alone (url http://localhost:8000):
  the model server's renderer API, the engine's own tokens. It is I/O, so it runs in the prepare step
  before scheduling (the request waits for it, up to the timeout); see epp/datalayer/render_client.py
  for its cache, coalescing and breaker. Ours: `cacheTokens` bounds the cache of rendered prompts.
- `local: {path: DIR}` (ours): a HuggingFace tokenizer.json (and chat template) read from a local
  path or mounted volume, so prefix blocks are real token blocks without a round trip (GIE #2330).
- `udsTokenizerConfig` (deprecated upstream): v0.10 refuses it whenever it is enabled (socketFile
  set): with modelName it counts as a second backend, without it lacks modelName. Refused here the
  same way, with the message saying what works instead; without socketFile it is ignored (warning).
A request that cannot be tokenized gets no tokens (consumers fall back to byte hashing, counted in
epp_token_producer_render_total and logged); it never fails.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from array import array
from collections import OrderedDict
from typing import Any

import orjson
import xxhash
from prometheus_client import Counter

from ...datalayer.render_client import RenderClient, RenderError
from ..framework import BackgroundTask, Plugin, PrepareRequest, need_duration, need_int, need_str, params_error, register

log = logging.getLogger(__name__)

RENDERS = Counter("epp_token_producer_render_total",
                  "Prompts tokenized through the model server's renderer API, by result (ok, cache_hit, "
                  "timeout, http_status, connect, bad_response, breaker_open, unsupported).", ["result"])
_CHAT_KEYS = ("tools", "documents", "chat_template", "chat_template_kwargs", "add_generation_prompt",
              "continue_final_message")
LOCAL_FAILURES = Counter("epp_token_producer_local_failures_total",
                         "Prompts the local tokenizer could not tokenize (they are scored approximately).")
COMPLETIONS_RENDER = "/v1/completions/render"
CHAT_RENDER = "/v1/chat/completions/render"

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


def _multimodal(body: dict) -> bool:
    """A chat with a non-text content part (image, audio, video): rendering it takes longer."""
    for m in body.get("messages") or ():
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, list) and any(isinstance(part, dict) and part.get("type") not in (None, "text")
                                       for part in c):
            return True
    return False


@register
class TokenProducer(Plugin, PrepareRequest, BackgroundTask):
    type_name = "token-producer"
    aliases = ("tokenizer",)

    def __init__(self, name: str | None = None, modelName: str = "", estimate: dict | None = None,
                 local: dict | None = None, vllm: dict | None = None, udsTokenizerConfig: dict | None = None) -> None:
        super().__init__(name)
        t = self.type_name
        self.model_name = need_str(t, "modelName", modelName or "")
        self.tokenizer = None
        self.render: RenderClient | None = None
        uds = _uds_enabled(t, udsTokenizerConfig)
        if estimate is not None:
            _check_estimate(t, estimate)
        if local is not None:
            if vllm is not None or estimate is not None or uds:
                raise params_error(t, "set one backend: local, vllm, estimate or udsTokenizerConfig, not several")
        else:
            use_vllm = vllm is not None or bool(self.model_name)
            if (estimate is not None and (uds or use_vllm)) or (uds and use_vllm):
                raise params_error(t, "only one of 'estimate', 'vllm', or 'udsTokenizerConfig' may be set"
                                   + (" (modelName selects vllm)" if uds and vllm is None else "")
                                   + ("; the UDS tokenizer sidecar is deprecated: use vllm: {url} (the model "
                                      "server's /render) or local: {path} (tokenizer.json on a mounted volume)"
                                      if uds else ""))
            if (uds or use_vllm) and not self.model_name:
                raise params_error(t, "'modelName' must be specified")
            if use_vllm:
                self.render = self._render_client(vllm if vllm is not None else {})
        self.template, self.specials = None, {}
        self.prefix_ids: list[int] = []
        self.failures = 0  # requests whose prompt could not be tokenized (callers fall back)
        self._next_failure_log = 0.0
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

    def _render_client(self, cfg) -> RenderClient:
        t = self.type_name
        if not isinstance(cfg, dict):
            raise params_error(t, "vllm must be a mapping {url, timeout, mmTimeout, cacheTokens}")
        unknown = set(cfg) - {"url", "timeout", "mmTimeout", "cacheTokens"}
        if unknown:
            raise params_error(t, f"vllm: unknown field(s) {sorted(unknown)}; known: url, timeout, mmTimeout, cacheTokens")
        url = cfg.get("url") or "http://localhost:8000"
        if not isinstance(url, str) or not url.startswith("http://"):
            raise params_error(t, f"vllm.url must be an http:// URL (TLS is not supported, as upstream), got {url!r}")
        timeout = need_duration(t, "vllm.timeout", cfg.get("timeout", "5s"))
        self.mm_timeout = need_duration(t, "vllm.mmTimeout", cfg.get("mmTimeout", "30s"))
        cache = need_int(t, "vllm.cacheTokens", cfg.get("cacheTokens", 8_000_000), 0)
        if timeout <= 0 or self.mm_timeout <= 0:
            raise params_error(t, "vllm.timeout and vllm.mmTimeout must be positive")
        return RenderClient(url, timeout, cache)

    @property
    def real(self) -> bool:
        return self.tokenizer is not None or self.render is not None

    @property
    def prepares(self) -> bool:
        """Only the vllm backend tokenizes through I/O before scheduling."""
        return self.render is not None

    def prepare(self, request: Any):
        """With the vllm backend: the prompt's tokens from the cache (None returned), or an awaitable
        that fetches them. Either way request.tokenization is set before scheduling."""
        if request.body is None:     # no body read (none sent, or a passthrough path): nothing to render
            return None
        built = self._render_request(request)
        if built is None:
            if request.tokenization is None:
                RENDERS.labels("unsupported").inc()
                request.tokenization = [None, None, 0]
            return None
        path, payload = built
        key = xxhash.xxh3_128_digest(payload, seed=len(path))
        ids = self.render.cached(key)
        if ids is not None:
            RENDERS.labels("cache_hit").inc()
            request.tokenization = [ids, None, 0]
            return None
        if not self.render.available():
            RENDERS.labels("breaker_open").inc()
            self.failures += 1
            request.tokenization = [None, None, 0]
            return None
        return self._fetch(request, path, payload, key, self.mm_timeout if _multimodal(request.body) else None)

    async def _fetch(self, request: Any, path: str, payload: bytes, key: bytes, timeout: float | None) -> None:
        try:
            ids = await self.render.render(path, payload, key, timeout)
        except RenderError as e:
            RENDERS.labels(e.reason).inc()
            self.failures += 1
            if e.reason != "breaker_open":
                log.warning("%s: cannot render request %s (%s); it is scored approximately", self.name,
                            request.request_id, e)
            request.tokenization = [None, None, 0]
            return
        RENDERS.labels("ok").inc()
        request.tokenization = [ids, None, 0]

    def _render_request(self, request: Any) -> tuple[str, bytes] | None:
        """The renderer call for this request: its prompt part only (sampling fields would only make
        equal prompts look different to the cache). None when there is nothing to render."""
        body = request.body
        if not isinstance(body, dict):
            return None
        model = self.model_name or request.target_model
        if request.api == "chat":
            doc = {"model": model, "messages": body.get("messages") or []}
            for k in _CHAT_KEYS:
                if k in body:
                    doc[k] = body[k]
            return CHAT_RENDER, orjson.dumps(doc)
        if request.api == "completions":
            p = body.get("prompt")
            if isinstance(p, list) and p and all(isinstance(t, int) for t in p):
                request.tokenization = [list(p), None, 0]    # already token ids
                return None
            doc = {"model": model, "prompt": p}
            if "add_special_tokens" in body:
                doc["add_special_tokens"] = body["add_special_tokens"]
            return COMPLETIONS_RENDER, orjson.dumps(doc)
        return None

    async def run_background(self, store) -> None:
        """Holds the renderer's connection pool for the process's life."""
        if self.render is None:
            return
        try:
            await asyncio.Event().wait()
        finally:
            await self.render.close()

    def tokens(self, state: dict, request: Any, limit: int = 0) -> list[int] | None:
        """Token ids of the prompt, at least `limit` of them when limit > 0 (a consumer that only
        looks at the head of the prompt need not pay for the rest); None with the estimate backend
        (callers hash the bytes directly)."""
        if self.render is not None:
            st = request.tokenization
            if st is None:      # decided without the prepare step (no body yet): nothing to go on
                st = request.tokenization = [None, None, 0]
            state[STATE_TOKENS] = st
            return st[0]
        if self.tokenizer is None:
            return None
        st = state.get(STATE_TOKENS)
        if st is None:
            try:
                st = self._start(request)
            except Exception as e:  # a template that rejects the messages, odd content: never fail the request
                self.failures += 1
                LOCAL_FAILURES.inc()
                t = time.monotonic()
                if t >= self._next_failure_log:   # logged at most once a minute; every one is counted
                    self._next_failure_log = t + 60.0
                    log.warning("%s: cannot tokenize request %s (%s); it is scored approximately (see "
                                "epp_token_producer_local_failures_total)", self.name,
                                getattr(request, "request_id", "?"), e)
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

    def count(self, state: dict, request: Any) -> int | None:
        """The prompt's length in tokens without tokenizing more than consumers already asked for: exact
        once tokenized to the end, else the tokens so far plus the rest of the text at the same
        characters per token. None with the estimate backend or when the prompt cannot be tokenized."""
        ids = self.tokens(state, request, 1)
        if ids is None:
            return None
        st = state.get(STATE_TOKENS) or request.tokenization
        text, pos = (st[1], st[2]) if st is not None else (None, 0)
        if text is None or pos >= len(text):
            return len(ids)
        if not ids or not pos:
            return len(ids) + (len(text) - pos + 3) // 4
        return len(ids) + round((len(text) - pos) * len(ids) / pos)

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


def _uds_enabled(plugin: str, cfg) -> bool:
    """udsTokenizerConfig as upstream reads it: enabled only when socketFile is set."""
    if cfg is None:
        return False
    if not isinstance(cfg, dict) or set(cfg) - {"socketFile", "useTCP", "modelTokenizerMap"}:
        raise params_error(plugin, "udsTokenizerConfig takes socketFile, useTCP, modelTokenizerMap")
    if cfg.get("socketFile"):
        return True
    log.warning("%s: udsTokenizerConfig without socketFile is ignored (as upstream)", plugin)
    return False


_ESTIMATE = {
    "image": {"mode": ("dynamic", "static"), "defaultResolution": {"width": None, "height": None},
              "static": {"staticToken": None}, "dynamic": {"factor": None}},
    "video": {"defaultResolution": {"width": None, "height": None}, "defaultDuration": None,
              "tokensPerFrame": {"mode": ("dynamic", "static"), "static": {"numTokensPerFrame": None},
                                 "dynamic": {"factor": None}},
              "frames": {"mode": ("sampled", "strided"), "minFrames": None, "maxFrames": None,
                         "sampled": {"sampleFPS": None, "temporalPatchSize": None},
                         "strided": {"defaultSourceFPS": None, "frameStride": None}},
              "maxVideoTokens": None},
}


def _check_estimate(plugin: str, cfg, schema=None, where: str = "estimate") -> None:
    """The estimate backend's settings, as strictly as upstream decodes them (modes checked)."""
    schema = _ESTIMATE if schema is None else schema
    if not isinstance(cfg, dict):
        raise params_error(plugin, f"{where} must be a mapping")
    for key, v in cfg.items():
        if key not in schema:
            raise params_error(plugin, f"unknown field {where}.{key}; known: {', '.join(schema)}")
        sub = schema[key]
        if isinstance(sub, dict):
            if v is not None:
                _check_estimate(plugin, v, sub, f"{where}.{key}")
        elif isinstance(sub, tuple):
            if v not in ("", None, *sub):
                raise params_error(plugin, f"{where}.{key} must be {' or '.join(repr(m) for m in sub)}, got {v!r}")
        elif v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise params_error(plugin, f"{where}.{key} must be a number, got {v!r}")


def ids_bytes(ids: list[int]) -> bytes:
    """Token ids as little-endian uint32s: what the block hash runs over."""
    a = array("I", ids)
    if a.itemsize != 4 or array("I", [1]).tobytes()[0] != 1:  # pragma: no cover - exotic platforms
        return b"".join(i.to_bytes(4, "little") for i in ids)
    return a.tobytes()
