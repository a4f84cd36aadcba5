"""`usage.prompt_tokens_details.cached_tokens` of a P/D answer reports what the prefill leg said.

The decode engine counts every prompt token it pulled over NIXL as cached; the client should see the
prefix-cache hits of the prefill that really computed the prompt. Non-streamed answers are rewritten
whole; streamed ones line by line as they pass, and only lines that carry a usage object are parsed:
every other chunk goes through as the same bytes object, uncopied.
"""
from __future__ import annotations

import json
import re

import orjson

USAGE = b'"usage"'
_LONG_DIGITS = re.compile(rb"\d{19}")


def loads(data: bytes):
    """orjson, or the standard library where orjson would change a value (it turns an int beyond 64 bits
    into a float: any run of 19 digits takes the exact path) or refuses it (NaN)."""
    if _LONG_DIGITS.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def dumps(obj) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:   # an int beyond 64 bits
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def cached_tokens_of(doc) -> int:
    """The prefill response's cached_tokens; vLLM leaves prompt_tokens_details null when it is 0."""
    usage = doc.get("usage") if isinstance(doc, dict) else None
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    v = details.get("cached_tokens") if isinstance(details, dict) else None
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


def set_cached_tokens(doc, cached: int) -> bool:
    """Sets it in doc's usage object (creating prompt_tokens_details); False when nothing changed."""
    usage = doc.get("usage") if isinstance(doc, dict) else None
    if not isinstance(usage, dict):
        return False
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, dict):
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
        return True
    if details.get("cached_tokens") == cached and type(details.get("cached_tokens")) is int:
        return False
    details["cached_tokens"] = cached
    return True


def rewrite_json(body: bytes, cached: int) -> bytes:
    """A whole JSON answer; anything that is not JSON with a usage object comes back as the same object."""
    if USAGE not in body:
        return body
    try:
        doc = loads(body)
    except ValueError:
        return body
    return dumps(doc) if set_cached_tokens(doc, cached) else body


def rewrite_line(line: bytes, cached: int) -> bytes:
    """One SSE line (with its line ending): a `data:` line holding JSON with usage is rewritten."""
    if not line.startswith(b"data:") or USAGE not in line:
        return line
    end = len(line.rstrip(b"\r\n"))
    payload = line[5:end].strip()
    new = rewrite_json(payload, cached)
    if new is payload:
        return line
    return b"data: " + new + line[end:]


class SSERewriter:
    """Feeds on the decode stream's chunks as they arrive; returns the bytes to send now. A line split
    across chunks waits for its end (only that tail is held back)."""

    def __init__(self, cached: int) -> None:
        self.cached = cached
        self.tail = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self.tail and chunk.endswith(b"\n") and USAGE not in chunk:
            return chunk
        data = self.tail + chunk if self.tail else chunk
        cut = data.rfind(b"\n") + 1
        done, self.tail = data[:cut], data[cut:]
        if USAGE not in done:
            return done
        return b"".join(rewrite_line(line, self.cached) for line in done.splitlines(keepends=True))

    def flush(self) -> bytes:
        """What is left at the end of the stream (a last line without a newline is passed on, rewritten)."""
        tail, self.tail = self.tail, b""
        return rewrite_line(tail, self.cached) if tail else b""
