"""Request bodies for each workload type, identical for every router of a run (seeded).

Prompts are made of the simulator tokenizer's whole-word tokens (" plan", " read", ...), so a prompt
of n words is exactly n tokens for the sims, for epp's local tokenizer and for any BPE router: lengths
in a scenario are token counts. Every body streams with usage (`stream_options.include_usage`) and
`ignore_eos`, so output lengths are exact.
"""
from __future__ import annotations

import random

import orjson

from .scenario import Scenario

_WORDS: list[str] | None = None


def words() -> list[str]:
    global _WORDS
    if _WORDS is None:
        from vllm_sim import tokenizer
        tok = tokenizer.load()
        _WORDS = [tok.decode([i]) for i in tok.word_token_ids()]
    return _WORDS


def text(rng: random.Random, n: int) -> str:
    w = words()
    return "".join(rng.choice(w) for _ in range(n))


class Item:
    """One request to send: its body and, for multi-turn, the session it continues; with tenants, whose
    it is and the headers it carries."""
    __slots__ = ("body", "session", "turn", "question", "tenant", "headers")

    def __init__(self, body: bytes, session=None, turn: int = 0, question: str = "") -> None:
        self.body, self.session, self.turn, self.question = body, session, turn, question
        self.tenant: str = ""
        self.headers: dict[str, str] = {}


class Workload:
    """next() gives the next request; done(item, text) reports a finished one (multi-turn history)."""

    def __init__(self, s: Scenario) -> None:
        self.w = s.workload
        self.model = s.pool.model
        self.rng = random.Random(self.w.seed)
        self.out_rng = random.Random(self.w.seed + 7)     # output lengths (output_max > 0): their own draws
        self.i = 0
        self.tenant_headers = {t["name"]: {str(k): str(v) for k, v in (t.get("headers") or {}).items()}
                               for t in self.w.tenants}
        t = self.w.type
        if t == "shared_prefix":
            self._shared_prefix()
        elif t in ("random", "long_input"):
            self.out_len = self.w.output_len
        elif t == "multi_turn":
            self._multi_turn()

    # ---- bodies --------------------------------------------------------------------------------------
    def body(self, prompt: str | None = None, messages: list | None = None, max_tokens: int | None = None) -> bytes:
        if max_tokens is None and self.w.output_max > 0:
            max_tokens = self.out_rng.randint(self.w.output_min or 1, self.w.output_max)
        b = {"model": self.model, "max_tokens": max_tokens or self.w.output_len, "ignore_eos": True,
             "stream": True, "stream_options": {"include_usage": True}}
        if self.w.api == "chat":
            b["messages"] = messages if messages is not None else [{"role": "user", "content": prompt}]
        else:
            b["prompt"] = prompt
        return orjson.dumps(b)

    # ---- shared prefix -------------------------------------------------------------------------------
    def _shared_prefix(self) -> None:
        w, rng = self.w, self.rng
        bodies = []
        for g in range(w.groups):
            system = text(rng, w.system_len)
            for _ in range(w.prompts_per_group):
                q = text(rng, w.question_len)
                if w.api == "chat":
                    bodies.append(self.body(messages=[{"role": "system", "content": system},
                                                      {"role": "user", "content": q}]))
                else:
                    bodies.append(self.body(system + q))
        rng.shuffle(bodies)
        self.bodies = bodies

    def shared_prefix_tokens(self) -> int:
        """Tokens of all distinct system prompts: the prefix working set."""
        return self.w.groups * self.w.system_len if self.w.type in ("shared_prefix", "multi_turn") else 0

    # ---- multi-turn chat -----------------------------------------------------------------------------
    def _multi_turn(self) -> None:
        w, rng = self.w, self.rng
        self.systems = [text(rng, w.system_len) for _ in range(w.groups)]
        # per session: its group and the finished turns [(question, answer)]
        self.sessions = [{"group": i % w.groups, "history": [], "epoch": 0} for i in range(w.sessions)]

    def _turn(self) -> Item:
        w = self.w
        sid = self.i % w.sessions
        s = self.sessions[sid]
        turn = len(s["history"])
        if turn >= w.turns:                       # conversation over: the session starts a new one
            s["history"], s["epoch"], turn = [], s["epoch"] + 1, 0
        rng = random.Random(f"{w.seed}/{sid}/{s['epoch']}/{turn}")
        q = text(rng, w.question_len)
        msgs = [{"role": "system", "content": self.systems[s["group"]]}]
        for uq, ans in s["history"]:
            msgs += [{"role": "user", "content": uq}, {"role": "assistant", "content": ans}]
        msgs.append({"role": "user", "content": q})
        return Item(self.body(messages=msgs), s, turn, q)

    # ---- iteration -----------------------------------------------------------------------------------
    def for_tenant(self, name: str) -> Item:
        """The next request, sent as tenant `name` (its headers from the scenario)."""
        item = self.next()
        item.tenant = name
        item.headers = self.tenant_headers[name]
        return item

    def next(self) -> Item:
        t = self.w.type
        if t == "shared_prefix":
            item = Item(self.bodies[self.i % len(self.bodies)])
        elif t == "multi_turn":
            item = self._turn()
        else:
            n = self.rng.randint(self.w.input_min, self.w.input_max)
            out = self.rng.randint(self.w.output_min, self.w.output_max) if self.w.output_max else None
            item = Item(self.body(text(self.rng, n), max_tokens=out))
        self.i += 1
        return item

    def done(self, item: Item, answer: str) -> None:
        s = item.session
        if s is not None and len(s["history"]) == item.turn:    # the session's latest turn: extend the history
            s["history"].append((item.question, answer))

    def wants_text(self) -> bool:
        return self.w.type == "multi_turn"
