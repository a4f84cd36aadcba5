"""openai-parser: the OpenAI API paths. Claims (path suffixes, tried in this order) conversations,
responses, chat/completions and its /render, completions and its /render, embeddings and
images/generations; each body must carry what its API needs (messages, prompt, input, items)."""
from __future__ import annotations

from ..framework import Parser, register


@register
class OpenAIParser(Parser):
    type_name = "openai-parser"
    routes = {
        "conversations": "conversations",
        "responses": "responses",
        "chat/completions": "chat",
        "chat/completions/render": "chat",
        "completions": "completions",
        "completions/render": "completions",
        "embeddings": "embeddings",
        "images/generations": "images",
    }
