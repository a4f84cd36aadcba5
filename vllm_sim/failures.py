"""Failure injection for the router's fault tests: a share of generation requests fail as vLLM or an
OpenAI-compatible proxy would answer them."""
from __future__ import annotations

import random

from .errors import APIError

FAILURES = {
    "rate_limit": (429, "Rate limit reached for requests.", "RateLimitError"),
    "invalid_api_key": (401, "Incorrect API key provided.", "AuthenticationError"),
    "context_length": (400, "This model's maximum context length is exceeded. Please reduce the length of the "
                            "messages or completion.", "BadRequestError"),
    "server_error": (503, "The server is overloaded or not ready yet.", "ServiceUnavailableError"),
    "invalid_request": (400, "Invalid request: simulated failure.", "BadRequestError"),
    "model_not_found": (404, "The model does not exist.", "NotFoundError"),
}


class FailureInjector:
    def __init__(self, rate: float, types: list[str] | None, seed: int = 0):
        types = types or list(FAILURES)
        unknown = [t for t in types if t not in FAILURES]
        if unknown:
            raise ValueError(f"unknown failure types {unknown}; known: {', '.join(FAILURES)}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError("--failure-rate must be within [0, 1]")
        self.rate = rate
        self.types = types
        self.rng = random.Random(seed)

    def maybe_fail(self) -> APIError | None:
        if self.rate <= 0 or self.rng.random() >= self.rate:
            return None
        status, msg, typ = FAILURES[self.rng.choice(self.types)]
        return APIError(status, msg, typ)
