"""Plugin interfaces. Plugins do no I/O: they read endpoint snapshots and the cycle state.

Scorers return one score per candidate, aligned with the candidate list, each in [0, 1]; the
profile clamps, weights and sums them. Type names are the upstream (GIE / llm-d) ones.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

from ..datalayer.endpoint import Endpoint
from .types import CycleState, LLMRequest, SchedulingResult


class Plugin:
    type_name: ClassVar[str] = ""

    def __init__(self, name: str | None = None, **params: Any) -> None:
        self.name = name or self.type_name
        if params:
            raise TypeError(f"plugin {self.type_name!r} takes no parameters {sorted(params)}")


class Filter(Plugin):
    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        raise NotImplementedError


class Scorer(Plugin):
    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        raise NotImplementedError


class Picker(Plugin):
    def pick(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint],
             scores: Sequence[float]) -> list[Endpoint]:
        raise NotImplementedError


class PreRequest:
    """Called once the request's targets are chosen, before it is sent (e.g. to record prefixes)."""

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        raise NotImplementedError


class EndpointLifecycle:
    """Told when endpoints leave the pool, so per-endpoint state can be dropped."""

    def endpoints_removed(self, addresses: list[str]) -> None:
        raise NotImplementedError


REGISTRY: dict[str, type[Plugin]] = {}


def register(cls: type[Plugin]) -> type[Plugin]:
    REGISTRY[cls.type_name] = cls
    return cls
