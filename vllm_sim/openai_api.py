"""Request validation and response bodies of vLLM's OpenAI-compatible completion endpoints."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from .errors import bad_request

# Fields we interpret; anything else (router hints, sampling knobs we do not model) is accepted and ignored.


@dataclass
class GenRequest:
    chat: bool
    model: str
    prompt_text: str | None
    prompt_ids: list[int] | None
    messages: list[dict] | None
    max_tokens: int | None
    stream: bool
    include_usage: bool
    continuous_usage: bool
    ignore_eos: bool
    seed: int | None
    echo: bool
    kv_transfer_params: dict | None
    request_id: str
    add_generation_prompt: bool


def _int(body: dict, key: str, lo: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad_request(f"{key} must be an integer", key)
    if lo is not None and v < lo:
        raise bad_request(f"{key} must be at least {lo}, got {v}.", key)
    return v


def _bool(body: dict, key: str, default: bool = False) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad_request(f"{key} must be a boolean", key)
    return v


def _number(body: dict, key: str, lo: float | None = None, hi: float | None = None) -> None:
    v = body.get(key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise bad_request(f"{key} must be a number", key)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise bad_request(f"{key} must be in [{lo}, {hi}], got {v}.", key)


def parse(body: Any, chat: bool, header_request_id: str | None) -> GenRequest:
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("model must be a string", "model")
    n = _int(body, "n", 1)
    if n is not None and n != 1:
        raise bad_request("n > 1 is not supported by the simulator", "n")
    _number(body, "temperature", 0.0, 2.0)
    _number(body, "top_p", 0.0, 1.0)
    max_tokens = _int(body, "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens", 1)
    if chat and body.get("max_completion_tokens") is None and body.get("max_tokens") is not None:
        max_tokens = _int(body, "max_tokens", 1)
    stream = _bool(body, "stream")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    if so and not stream:
        raise bad_request("Stream options can only be defined when `stream=True`.", "stream_options")
    so = so or {}
    seed = _int(body, "seed")
    kvp = body.get("kv_transfer_params")
    if kvp is not None and not isinstance(kvp, dict):
        raise bad_request("kv_transfer_params must be an object", "kv_transfer_params")
    prompt_text = prompt_ids = messages = None
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("messages must be a non-empty list", "messages")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise bad_request("each message must be an object with a string role", "messages")
            c = m.get("content")
            if c is not None and not isinstance(c, (str, list)):
                raise bad_request("message content must be a string or a list of parts", "messages")
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]         # a batch of one
        if isinstance(prompt, str):
            prompt_text = prompt
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompt_ids = list(prompt)
        elif isinstance(prompt, list) and len(prompt) > 1:
            raise bad_request("batched prompts are not supported by the simulator; send one prompt", "prompt")
        else:
            raise bad_request("prompt must be a string, a list of token ids, or a list of one of them", "prompt")
    rid = header_request_id or ""
    return GenRequest(
        chat=chat, model=model, prompt_text=prompt_text, prompt_ids=prompt_ids, messages=messages,
        max_tokens=max_tokens, stream=stream, include_usage=bool(so.get("include_usage")),
        continuous_usage=bool(so.get("continuous_usage_stats")), ignore_eos=_bool(body, "ignore_eos"),
        seed=seed, echo=_bool(body, "echo"), kv_transfer_params=kvp,
        request_id=(("chatcmpl-" if chat else "cmpl-") + (rid or uuid.uuid4().hex)),
        add_generation_prompt=_bool(body, "add_generation_prompt", True))


def usage(prompt: int, completion: int, cached: int) -> dict:
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def chunk(g: GenRequest, created: int, text: str, finish: str | None, first: bool) -> dict:
    if g.chat:
        delta: dict = {"content": text}
        if first:
            delta = {"role": "assistant", "content": text}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, "stop_reason": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
        obj = "text_completion"
    return {"id": g.request_id, "object": obj, "created": created, "model": g.model, "choices": [choice]}


def usage_chunk(g: GenRequest, created: int, u: dict) -> dict:
    return {"id": g.request_id, "object": "chat.completion.chunk" if g.chat else "text_completion",
            "created": created, "model": g.model, "choices": [], "usage": u}


def full_response(g: GenRequest, created: int, text: str, finish: str | None, u: dict,
                  kv_transfer_params: dict | None) -> dict:
    if g.chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": []},
                  "logprobs": None, "finish_reason": finish, "stop_reason": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None,
                  "prompt_logprobs": None}
        obj = "text_completion"
    return {"id": g.request_id, "object": obj, "created": created, "model": g.model, "choices": [choice],
            "usage": u, "kv_transfer_params": kv_transfer_params}


def now_s() -> int:
    return int(time.time())
