"""Model-name rewrites: the model a client asks for becomes the model the server is asked for
(InferenceModelRewrite rules, or the x-gateway-model-name-rewrite header), and the server's answer
names the client's model again.

Rules are [(model or None, [(target, weight), ...])], exact matches first; the first rule that matches
wins and its target is drawn by weight. The response side is a byte-stream replacer of the JSON string
"model":"<target>", so a rewrite works on streamed (SSE) and whole bodies without parsing them.
"""
from __future__ import annotations

import random

import orjson



class Rewrites:
    def __init__(self, rules: list | None = None, rng: random.Random | None = None) -> None:
        self.rules = rules or []
        self.rng = rng or random.Random()

    def target(self, model: str) -> str | None:
        for match, targets in self.rules:
            if match is None or match == model:
                if len(targets) == 1:
                    return targets[0][0]
                total = sum(w for _, w in targets)
                x = self.rng.random() * total
                for name, w in targets:
                    x -= w
                    if x < 0:
                        return name
                return targets[-1][0]
        return None


class ModelNameMapper:
    """Replaces "model":"<served>" (with or without a space after the colon) by the client's name in
    a byte stream, holding back only as many bytes as a pattern split across chunks could need."""

    def __init__(self, served: str, requested: str) -> None:
        s, r = orjson.dumps(served), orjson.dumps(requested)
        self.pairs = [(b'"model":' + s, b'"model":' + r), (b'"model": ' + s, b'"model": ' + r)]
        self.keep = max(len(a) for a, _ in self.pairs) - 1
        self.tail = b""

    def feed(self, data: bytes, end: bool) -> bytes:
        buf = self.tail + data if self.tail else data
        for a, b in self.pairs:
            if a in buf:
                buf = buf.replace(a, b)
        if end:
            self.tail = b""
            return buf
        # an occurrence cut by the chunk boundary starts within the last `keep` bytes: hold those
        cut = max(0, len(buf) - self.keep)
        self.tail = buf[cut:]
        return buf[:cut]
