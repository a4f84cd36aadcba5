"""Parsing request bodies: what is needed to schedule, and a 400 that says why otherwise.

Which grammar a path gets is the configured parsers' choice (requestHandler.parsers, upstream's
ParserRegistry): each parser plugin claims path suffixes, tried in order, first match wins; a parser
that claims none (passthrough) takes every other path. The grammars are upstream's: OpenAI
(completions, chat, responses, embeddings, conversations, images, and the render paths), Anthropic
messages (count_tokens forwarded untouched), vLLM's /inference/v1/generate, and passthrough.
The body's bytes are never re-encoded on the way through; parsing only reads them.
"""
from __future__ import annotations

from typing import Any

import orjson

from .errors import bad_request

APIS = {
    "/v1/completions": "completions",
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
}
PASSTHROUGH = "passthrough"          # the catch-all grammar: the body is forwarded as it is, no model needed
COUNT_TOKENS = "anthropic-count-tokens"
# grammars whose requests carry no model to route on (and whose responses are not read)
NO_MODEL = (PASSTHROUGH, COUNT_TOKENS)


def api_for_path(path: str) -> str | None:
    """The grammar of the three OpenAI paths every EPP knows (upstream's default parsers route more)."""
    return APIS.get(path.split("?", 1)[0].rstrip("/") or "/")


class Routes:
    """The configured parsers' claims in order: request path -> grammar, or None when no parser
    claims it. Paths repeat, so answers are cached (bounded)."""

    _MAX_CACHED = 4096

    def __init__(self, tables: list[dict[str, str]]) -> None:
        self.entries: list[tuple[str, str]] = []
        self.fallback: str | None = None
        for routes in tables:
            if not routes:
                self.fallback = PASSTHROUGH
                break
            self.entries.extend((suffix.strip().strip("/"), grammar) for suffix, grammar in routes.items())
        self._cache: dict[str, str | None] = {}

    def grammar(self, path: str) -> str | None:
        g = self._cache.get(path, "")
        if g != "":
            return g
        p = path.split("?", 1)[0].strip()
        if p.endswith("/"):
            p = p[:-1]
        g = next((grammar for suffix, grammar in self.entries if p.endswith(suffix)), self.fallback)
        if len(self._cache) >= self._MAX_CACHED:
            self._cache.clear()
        self._cache[path] = g
        return g


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(v), type(v).__name__)


def _expect(body: dict, key: str, types: tuple, what: str, required: bool = False) -> Any:
    if key not in body:
        if required:
            raise bad_request(f"'{key}' is required")
        return None
    v = body[key]
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        raise bad_request(f"'{key}' must be {what}, got {_type_name(v)}")
    return v


def decode_json(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise bad_request(f"request body is not valid JSON (UTF-8): {e}") from None
    if not isinstance(body, dict):
        raise bad_request(f"request body must be a JSON object, got {_type_name(body)}")
    return body


def _is_token_list(v: list) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) for t in v)


def _completion_prompt(body: dict) -> bytes:
    prompt = body.get("prompt")
    if "prompt" not in body:
        raise bad_request("'prompt' is required for /v1/completions")
    if isinstance(prompt, str):
        return prompt.encode()
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return "".join(prompt).encode()
        if _is_token_list(prompt):
            return orjson.dumps(prompt)
        if all(isinstance(p, list) and _is_token_list(p) for p in prompt):
            return orjson.dumps(prompt)
    raise bad_request("'prompt' must be a string, an array of strings, an array of token ids "
                      "or an array of arrays of token ids")


def _chat_prompt(body: dict) -> bytes:
    messages = _expect(body, "messages", (list,), "an array of messages", required=True)
    if not messages:
        raise bad_request("'messages' must not be empty")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad_request(f"'messages[{i}]' must be an object, got {_type_name(m)}")
        if not isinstance(m.get("role"), str):
            raise bad_request(f"'messages[{i}].role' must be a string")
        c = m.get("content")
        if c is not None and not isinstance(c, (str, list)):
            raise bad_request(f"'messages[{i}].content' must be a string, an array of parts or null")
    # the JSON of the messages, as upstream hashes it: the chat template's output starts with it in order
    return orjson.dumps(messages)


def _responses_prompt(body: dict) -> bytes:
    inp = body.get("input")
    if "input" not in body:
        raise bad_request("'input' is required for /v1/responses")
    if not isinstance(inp, (str, list)):
        raise bad_request(f"'input' must be a string or an array, got {_type_name(inp)}")
    instructions = _expect(body, "instructions", (str, type(None)), "a string")
    text = inp.encode() if isinstance(inp, str) else orjson.dumps(inp)
    return (instructions.encode() + b"\n" + text) if instructions else text


def _non_empty(body: dict, key: str, what: str) -> Any:
    v = body.get(key)
    if v is None or v == "" or v == [] or v == {}:
        raise bad_request(f"'{key}' is required and must not be empty for {what}")
    return v


def _embeddings_prompt(body: dict) -> bytes:
    inp = _non_empty(body, "input", "/v1/embeddings")
    return inp.encode() if isinstance(inp, str) else orjson.dumps(inp)


def _conversations_prompt(body: dict) -> bytes:
    return orjson.dumps(_non_empty(body, "items", "/v1/conversations"))


def _images_prompt(body: dict) -> bytes:
    prompt = _non_empty(body, "prompt", "/v1/images/generations")
    if not isinstance(prompt, str):
        raise bad_request(f"'prompt' must be a string, got {_type_name(prompt)}")
    return prompt.encode()


def _anthropic_prompt(body: dict) -> bytes:
    messages = _expect(body, "messages", (list,), "an array of messages", required=True)
    if not messages:
        raise bad_request("'messages' must have at least one message")
    system = body.get("system")
    return (orjson.dumps(system) + b"\n" if system else b"") + orjson.dumps(messages)


def _generate_prompt(body: dict) -> bytes:
    ids = body.get("token_ids")
    if not isinstance(ids, list) or not ids:
        raise bad_request("'token_ids' is required and must be a non-empty array for /inference/v1/generate")
    if not _is_token_list(ids):
        raise bad_request("'token_ids' must be an array of integers")
    return orjson.dumps(ids)


_PROMPTS = {"completions": _completion_prompt, "chat": _chat_prompt, "responses": _responses_prompt,
            "embeddings": _embeddings_prompt, "conversations": _conversations_prompt, "images": _images_prompt,
            "anthropic-messages": _anthropic_prompt, "generate": _generate_prompt}
GRAMMARS = (*_PROMPTS, PASSTHROUGH, COUNT_TOKENS)


def parse_body(api: str, raw: bytes) -> tuple[dict[str, Any] | None, str, bytes, bool, str]:
    """(body, model, prompt bytes for prefix hashing, stream, cache_salt); raises a 400 EPPError.
    Passthrough and count_tokens bodies are not read: (None, "", b"", False, "")."""
    if api in NO_MODEL:
        return None, "", b"", False, ""
    body = decode_json(raw)
    model = _expect(body, "model", (str,), "a string", required=True)
    if not model:
        raise bad_request("'model' must not be empty")
    stream = _expect(body, "stream", (bool, type(None)), "a boolean") or False
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        v = _expect(body, key, (int, type(None)), "an integer")
        if v is not None and v < 0:
            raise bad_request(f"'{key}' must not be negative")
    _expect(body, "stream_options", (dict, type(None)), "an object")
    salt = _expect(body, "cache_salt", (str, type(None)), "a string") or ""
    prompt = _PROMPTS[api](body)
    return body, model, prompt, stream, salt
