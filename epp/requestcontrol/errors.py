"""Errors that end a request with an HTTP status the client sees (an ext_proc ImmediateResponse)."""
from __future__ import annotations

import orjson

_CODES = {400: "BadRequest", 404: "NotFound", 413: "PayloadTooLarge", 429: "TooManyRequests",
          500: "Internal", 503: "ServiceUnavailable"}
_TYPES = {400: "BadRequestError", 404: "NotFoundError", 413: "BadRequestError", 429: "RateLimitError",
          500: "InternalServerError", 503: "ServiceUnavailableError"}


class EPPError(Exception):
    """headers: extra response headers (e.g. x-llm-d-request-dropped-reason); plain: the body is the
    message itself, as text (upstream's eviction answer), instead of the JSON error."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None,
                 plain: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []
        self.plain = plain
        self.model = ""  # the request's model when known, for the error metric

    @property
    def code(self) -> str:
        return _CODES.get(self.status, str(self.status))

    @property
    def content_type(self) -> str:
        return "text/plain" if self.plain else "application/json"

    def body(self) -> bytes:
        """OpenAI's error shape (clients parse it), with GIE's `inference error: <Code> - <why>` text."""
        if self.plain:
            return self.message.encode()
        return orjson.dumps({"error": {"message": f"inference error: {self.code} - {self.message}",
                                       "type": _TYPES.get(self.status, "Error"), "code": self.status}})


def bad_request(message: str) -> EPPError:
    return EPPError(400, message)
