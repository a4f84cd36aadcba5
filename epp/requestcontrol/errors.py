"""Errors that end a request with an HTTP status the client sees (an ext_proc ImmediateResponse)."""
from __future__ import annotations

import orjson

_CODES = {400: "BadRequest", 404: "NotFound", 413: "PayloadTooLarge", 429: "TooManyRequests",
          500: "Internal", 503: "ServiceUnavailable"}
_TYPES = {400: "BadRequestError", 404: "NotFoundError", 413: "BadRequestError", 429: "RateLimitError",
          500: "InternalServerError", 503: "ServiceUnavailableError"}


class EPPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.model = ""  # the request's model when known, for the error metric

    @property
    def code(self) -> str:
        return _CODES.get(self.status, str(self.status))

    def body(self) -> bytes:
        """OpenAI's error shape (clients parse it), with GIE's `inference error: <Code> - <why>` text."""
        return orjson.dumps({"error": {"message": f"inference error: {self.code} - {self.message}",
                                       "type": _TYPES.get(self.status, "Error"), "code": self.status}})


def bad_request(message: str) -> EPPError:
    return EPPError(400, message)
