"""anthropic-parser: Anthropic's Messages API. messages needs at least one message; messages/
count_tokens is forwarded as it is (no model read, the response not parsed)."""
from __future__ import annotations

from ..framework import Parser, register


@register
class AnthropicParser(Parser):
    type_name = "anthropic-parser"
    routes = {"messages/count_tokens": "anthropic-count-tokens", "messages": "anthropic-messages"}
