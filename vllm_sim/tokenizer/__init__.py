"""The simulator's tokenizer: HuggingFace `tokenizers` on a local tokenizer.json, fully offline.

    from vllm_sim import tokenizer
    tok = tokenizer.load()                 # or load("/path/to/dir")
    ids = tok.encode("hello world")        # list[int], no special tokens added
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])   # add_generation_prompt=True
    ids = tok.encode(text)                 # special-token strings in the text map to their ids
    tok.decode(ids)

A tokenizer directory holds `tokenizer.json` (any HF fast tokenizer) and optionally
`chat_template.jinja` (or `chat_template` in `tokenizer_config.json`). The shipped one is a byte-level BPE
with 8192 tokens built by `python -m vllm_sim.tokenizer.build` (deterministic; no download).

Chat template (ChatML, the format of the shipped chat_template.jinja; reproduce it exactly to get the
same token ids as the simulator). For each message, in order:

    "<|im_start|>" + role + "\\n" + content + "<|im_end|>\\n"

where content is the string, or for a list of parts the concatenation of the `text` of parts with
type "text" (other parts dropped). Then, when add_generation_prompt (the default, as in vLLM's chat
endpoint) is true: "<|im_start|>assistant\\n". The rendered string is then encoded with
`Tokenizer.encode(text, add_special_tokens=False)`: no BOS is added; "<|im_start|>", "<|im_end|>" and
"<|endoftext|>" are added special tokens (ids 1, 2, 0) matched literally in the text.

The template is applied in Python rather than with jinja2 (not a dependency); a custom template in a
directory is honoured only when jinja2 is importable.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable

from tokenizers import Tokenizer as _HFTokenizer

DEFAULT_DIR = os.path.dirname(os.path.abspath(__file__))
SHIPPED_TEMPLATE = os.path.join(DEFAULT_DIR, "chat_template.jinja")


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise TypeError("message content must be a string or a list of content parts")


def chatml(messages: Iterable[dict], add_generation_prompt: bool = True) -> str:
    parts = []
    for m in messages:
        parts.append(f"<|im_start|>{m['role']}\n{_content_text(m.get('content'))}<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


class SimTokenizer:
    def __init__(self, directory: str):
        self.directory = directory
        self._tok = _HFTokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        self.vocab_size = self._tok.get_vocab_size()
        self.eos_token_id = self._tok.token_to_id("<|im_end|>")
        self._template = None
        path = os.path.join(directory, "chat_template.jinja")
        text = open(path).read() if os.path.exists(path) else None
        cfg_path = os.path.join(directory, "tokenizer_config.json")
        if text is None and os.path.exists(cfg_path):
            text = json.load(open(cfg_path)).get("chat_template")
        shipped = open(SHIPPED_TEMPLATE).read()
        if text is not None and text != shipped:
            try:  # a foreign template: only renderable with jinja2
                import jinja2
                self._template = jinja2.Environment().from_string(text)
            except ImportError:
                import logging
                logging.getLogger("vllm_sim").warning(
                    "%s has its own chat template but jinja2 is not installed: using ChatML instead", directory)
                self._template = None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self._template is not None:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt)
        return chatml(messages, add_generation_prompt)

    def word_token_ids(self) -> list[int]:
        """Ids of tokens that decode to a space plus lowercase letters: clean text for generated output."""
        from .build import _WORDS
        words = set(_WORDS)
        out, fallback = [], []
        for tok, i in self._tok.get_vocab().items():
            s = self._tok.decode([i])
            if len(s) >= 3 and s[0] == " " and s[1:].isalpha() and s[1:].islower():
                (out if s[1:] in words else fallback).append(i)
        return sorted(out) if len(out) >= 50 else sorted(out + fallback)


_cache: dict[str, SimTokenizer] = {}


def load(directory: str | None = None) -> SimTokenizer:
    d = os.path.abspath(directory or DEFAULT_DIR)
    if d not in _cache:
        _cache[d] = SimTokenizer(d)
    return _cache[d]
