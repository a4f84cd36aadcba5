"""passthrough-parser: claims no path, so it takes every path no parser before it claimed: the body is
forwarded untouched, no model is needed, and scheduling runs on load alone (no prompt to match).
Parsers listed after it are never asked."""
from __future__ import annotations

from ..framework import Parser, register


@register
class PassthroughParser(Parser):
    type_name = "passthrough-parser"
    routes: dict[str, str] = {}
