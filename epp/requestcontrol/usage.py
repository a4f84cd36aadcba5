"""Reads token usage out of a model server's answer without holding any of it back.

SSE answers are scanned chunk by chunk: only a chunk that mentions "usage" is parsed, and only the
event lines in it. Non-streaming answers keep references to their chunks (no copy) up to a cap and
are parsed once at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter

import orjson

MAX_JSON_ANSWER = 8 << 20


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    seen: bool = False
    cached_reported: bool = False   # the answer said how many prompt tokens were cached (vLLM: prompt_tokens_details)
    response_bytes: int = 0   # the response body's size as it passed

    def take(self, usage) -> None:
        if not isinstance(usage, dict):
            return
        p, c = usage.get("prompt_tokens", usage.get("input_tokens")), usage.get("completion_tokens", usage.get("output_tokens"))
        if isinstance(p, int):
            self.prompt_tokens = p
        if isinstance(c, int):
            self.completion_tokens = c
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            self.cached_tokens = details["cached_tokens"]
            self.cached_reported = True
        self.seen = True


class UsageReader:
    def __init__(self, sse: bool, on_first=None) -> None:
        self.sse = sse
        # called once with no argument when the first non-empty chunk arrives (the first token of a stream)
        self.on_first = on_first
        self.first_at = 0.0        # perf_counter of the first non-empty chunk (TTFT, as upstream's); 0: none
        self.usage = Usage()
        self._carry = b""          # SSE: the incomplete last line of the previous chunk
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.usage.response_bytes += len(chunk)
        if not self.first_at:
            self.first_at = perf_counter()
            if self.on_first is not None:
                first, self.on_first = self.on_first, None
                first()
        if not self.sse:
            if self._size <= MAX_JSON_ANSWER:
                self._chunks.append(chunk)
                self._size += len(chunk)
            return
        # a partial line left from the last chunk joins this one (SSE lines are short, so is the copy)
        data = self._carry + chunk if self._carry else chunk
        cut = data.rfind(b"\n")
        complete, self._carry = (data[:cut], data[cut + 1:]) if cut >= 0 else (b"", data)
        if len(self._carry) > (1 << 20):
            self._carry = b""  # a line this long is not an event we can use
        if b"usage" not in complete:
            return
        for line in complete.split(b"\n"):
            if line.startswith(b"data:") and b"usage" in line:
                self._event(line[5:].strip())

    def _event(self, payload: bytes) -> None:
        try:
            ev = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if isinstance(ev, dict):
            if ev.get("usage") is not None:
                self.usage.take(ev["usage"])
            elif isinstance(ev.get("response"), dict):  # /v1/responses: response.completed event
                self.usage.take(ev["response"].get("usage"))

    def finish(self) -> Usage:
        if self.sse:
            if self._carry.startswith(b"data:") and b"usage" in self._carry:
                self._event(self._carry[5:].strip())
        elif self._chunks and self._size <= MAX_JSON_ANSWER:
            try:
                doc = orjson.loads(b"".join(self._chunks))
                if isinstance(doc, dict):
                    self.usage.take(doc.get("usage"))
            except orjson.JSONDecodeError:
                pass
        self._chunks = []
        return self.usage
