"""Plugin interfaces. Plugins do no I/O: they read endpoint snapshots and the cycle state.

Scorers return one score per candidate, aligned with the candidate list, each in [0, 1]; the
profile clamps, weights and sums them. Type names are the upstream (GIE / llm-d) ones; a plugin
takes its upstream parameters as keyword arguments, so a config file's `parameters` map straight on.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from ..datalayer.endpoint import Endpoint
from .types import CycleState, LLMRequest, ProfileResult, SchedulingResult

if TYPE_CHECKING:
    from .profile import Profile


class Plugin:
    type_name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.type_name


class Filter(Plugin):
    def filter(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        raise NotImplementedError


class Scorer(Plugin):
    # True when the scorer itself guarantees finite scores in [0, 1] (a property test holds every
    # built-in one to it), so the profile can skip clamping them on the hot path
    bounded: ClassVar[bool] = False

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        raise NotImplementedError


class Picker(Plugin):
    def pick(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint],
             scores: Sequence[float]) -> list[Endpoint]:
        raise NotImplementedError


class ProfileHandler(Plugin):
    """Chooses which profiles run (called until it returns none), then turns their results into one."""

    def pick_profiles(self, state: CycleState, request: LLMRequest, profiles: dict[str, "Profile"],
                      results: dict[str, ProfileResult]) -> list["Profile"]:
        raise NotImplementedError

    def process_results(self, state: CycleState, request: LLMRequest,
                        results: dict[str, ProfileResult]) -> SchedulingResult:
        raise NotImplementedError

    def validate(self, profiles: dict[str, "Profile"]) -> None:
        """Raise ValueError when the configured profiles cannot work with this handler."""


class PreRequest:
    """Called once the request's targets are chosen, before it is sent (e.g. to record prefixes).
    Returns headers to set on the request to the model server, or None."""

    def pre_request(self, state: CycleState, request: LLMRequest,
                    result: SchedulingResult) -> list[tuple[str, str]] | None:
        raise NotImplementedError


class ResponseHeaders:
    """Called when the model server's response headers arrive; returns headers to add to the response."""

    def response_headers(self, request: LLMRequest, result: SchedulingResult,
                         status: int | None) -> list[tuple[str, str]] | None:
        raise NotImplementedError


class ResponseComplete:
    """Called once when the request's stream ends, answered, failed or cancelled."""

    def response_complete(self, request: LLMRequest, result: SchedulingResult, status: int | None,
                          usage=None) -> None:
        """usage: what the model server reported (prompt, completion, cached tokens), or None."""
        raise NotImplementedError


class EndpointLifecycle:
    """Told when endpoints leave the pool, so per-endpoint state can be dropped."""

    def endpoints_removed(self, addresses: list[str]) -> None:
        raise NotImplementedError


REGISTRY: dict[str, type[Plugin]] = {}


def register(cls: type[Plugin]) -> type[Plugin]:
    for name in (cls.type_name, *cls.aliases):
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"plugin type {name!r} registered twice")
        REGISTRY[name] = cls
    return cls


def params_error(plugin: str, message: str) -> ValueError:
    return ValueError(f"{plugin}: {message}")


def need_int(plugin: str, key: str, v: Any, minimum: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise params_error(plugin, f"parameter {key} must be an integer >= {minimum}, got {v!r}")
    return v


def need_number(plugin: str, key: str, v: Any, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise params_error(plugin, f"parameter {key} must be a number, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise params_error(plugin, f"parameter {key} must be in [{lo}, {hi}], got {v!r}")
    return float(v)


def need_bool(plugin: str, key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise params_error(plugin, f"parameter {key} must be true or false, got {v!r}")
    return v


def need_str(plugin: str, key: str, v: Any, choices: Sequence[str] | None = None) -> str:
    if not isinstance(v, str) or (choices is not None and v not in choices):
        want = f"one of {list(choices)}" if choices else "a string"
        raise params_error(plugin, f"parameter {key} must be {want}, got {v!r}")
    return v


def max_endpoints(plugin: str, v: Any) -> int:
    """maxNumOfEndpoints: an integer; as upstream, 0 or less means 1."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise params_error(plugin, f"parameter maxNumOfEndpoints must be an integer, got {v!r}")
    return v if v > 0 else 1


def need_duration(plugin: str, key: str, v: Any) -> float:
    """A duration parameter: seconds as a number, or Go syntax ("200ms", "2s"). Returns seconds."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    from ..flags import duration
    try:
        return duration(str(v))
    except Exception:
        raise params_error(plugin, f"parameter {key} must be a duration like 200ms, got {v!r}") from None
