"""Traces: one request per JSONL line, replayed at its arrival time.

    {"t": 0.125, "prompt": "the text", "output_tokens": 200}
    {"t": 0.5, "prompt_tokens": 3000, "prefix_group": "rag-7", "prefix_tokens": 2400, "output_tokens": 64}
    {"t": 0.9, "prompt_tokens": 900, "session": "chat-12", "output_tokens": 128, "priority": -1}

t: arrival in seconds from the trace's start (required). The prompt is its text, or prompt_tokens of
synthetic text: the first prefix_tokens shared by every request of its prefix_group, or, for a session,
the session's previous prompt followed by new text (a conversation that grows). output_tokens: the
answer's length (ignore_eos, default 128). priority: the objective's priority (< 0 is sheddable).
api: completions (default) or chat. Synthetic text is the simulator tokenizer's whole-word tokens, so
n words are n tokens for the pods and for epp's tokenizer alike.
"""
from __future__ import annotations

import json
import random

import orjson

from testbed.workload import Item, text

DEFAULT_OUTPUT = 128


class TraceError(ValueError):
    pass


class TraceItem(Item):
    __slots__ = ("priority",)

    def __init__(self, body: bytes, priority: int = 0) -> None:
        super().__init__(body)
        self.priority = priority


def _body(model: str, api: str, prompt: str, out: int) -> bytes:
    b = {"model": model, "max_tokens": out, "ignore_eos": True, "stream": True,
         "stream_options": {"include_usage": True}}
    if api == "chat":
        b["messages"] = [{"role": "user", "content": prompt}]
    else:
        b["prompt"] = prompt
    return orjson.dumps(b)


def read(path: str, model: str, seed: int = 1) -> tuple[list[tuple[float, TraceItem]], str]:
    """(sorted (t, item) pairs, api)."""
    groups: dict[str, str] = {}
    sessions: dict[str, str] = {}
    items = []
    apis = set()
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path}:{n}"
            try:
                d = json.loads(line)
            except ValueError as e:
                raise TraceError(f"{where}: not JSON: {e}") from None
            if not isinstance(d, dict) or not isinstance(d.get("t"), (int, float)) or d["t"] < 0:
                raise TraceError(f"{where}: each line needs t (seconds >= 0)")
            api = d.get("api", "completions")
            if api not in ("completions", "chat"):
                raise TraceError(f"{where}: api must be completions or chat")
            apis.add(api)
            out = d.get("output_tokens", DEFAULT_OUTPUT)
            if not isinstance(out, int) or out < 1:
                raise TraceError(f"{where}: output_tokens must be a positive integer")
            rng = random.Random(f"{seed}/{n}")
            if isinstance(d.get("prompt"), str):
                prompt = d["prompt"]
            elif isinstance(d.get("prompt_tokens"), int) and d["prompt_tokens"] > 0:
                total = d["prompt_tokens"]
                head = ""
                if d.get("session") is not None:
                    head = sessions.get(str(d["session"]), "")
                elif d.get("prefix_group") is not None:
                    g = str(d["prefix_group"])
                    k = int(d.get("prefix_tokens", 0))
                    if g not in groups:
                        groups[g] = text(random.Random(f"{seed}/group/{g}"), k)
                    head = groups[g]
                have = head.count(" ")      # each word token starts with its space
                prompt = head + text(rng, max(1, total - have))
                if d.get("session") is not None:
                    sessions[str(d["session"])] = prompt
            else:
                raise TraceError(f"{where}: give prompt (text) or prompt_tokens (a positive integer)")
            prio = d.get("priority", 0)
            if not isinstance(prio, int):
                raise TraceError(f"{where}: priority must be an integer")
            items.append((float(d["t"]), TraceItem(_body(model, api, prompt, out), prio)))
    if not items:
        raise TraceError(f"{path}: no requests")
    if len(apis) > 1:
        raise TraceError(f"{path}: one api per trace (found {sorted(apis)})")
    items.sort(key=lambda x: x[0])
    t0 = items[0][0]
    return [(t - t0, it) for t, it in items], apis.pop()


def write(path: str, flights, api: str, with_text: bool = False) -> int:
    """A simulated run's requests as a trace: send time, prompt length (the pods' token count), output
    length, and with_text the prompt itself (needed where prompts share prefixes)."""
    n = 0
    with open(path, "w") as fh:
        for f in flights:
            b = orjson.loads(f.item.body)
            d = {"t": round(f.t_send, 6), "output_tokens": b.get("max_tokens") or DEFAULT_OUTPUT}
            if not with_text:
                d["prompt_tokens"] = f.eng.num_prompt_tokens if f.eng is not None else f.prompt_tokens
            elif api == "chat":
                d["api"] = "chat"
                d["prompt"] = "".join(m.get("content") or "" for m in b["messages"])
            else:
                d["prompt"] = b["prompt"]
            fh.write(json.dumps(d) + "\n")
            n += 1
    return n
