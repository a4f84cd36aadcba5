"""The plugin contract: every hook a plugin may implement, declared here and discovered by the
framework (the config loader and the scheduler), never by callers probing for attributes.

A plugin is a subclass of `Plugin` and of one or more of the hook classes below; the framework finds
its hooks with isinstance. Type names are upstream's (GIE / llm-d router); a plugin takes its upstream
parameters as keyword arguments of __init__, so a config file's `parameters` map straight on.

Scheduling hooks (Filter, Scorer, Picker, ProfileHandler) and the request-path hooks (PreRequest,
ResponseHeaders, ResponseFirstChunk, ResponseComplete) run on the event loop for every request and do no I/O: they read
endpoint snapshots and the cycle state. A plugin that needs I/O before scheduling (tokenizing through
the model server) says so with PrepareRequest; one that needs a long-running task (consuming KV
events) with BackgroundTask. Scorers return one score per candidate, aligned with the candidate list,
each in [0, 1]; the profile clamps, weights and sums them.

Parsers (requestHandler.parsers) and data-layer plugins (dataLayer.sources) are plugins too: a Parser
says which request paths it claims and which body grammar request control applies to them; a
DataSource or DataExtractor says what the data layer collects (the composition root applies it).

Lifecycle of a configured plugin: __init__(parameters) -> bind(all plugins) -> [profile handler]
validate(profiles) -> the scheduler collects its hooks (sub-plugins included) -> run_background
started by the composition root -> per request: prepare, filter/score/pick, pre_request, then
response_headers, response_first_chunk (streamed answers) and response_complete.

Flow control (epp/flowcontrol, with the flowControl feature gate) holds requests in the EPP while the
pool is saturated; its policies are plugins too (OrderingPolicy, FairnessPolicy, UsageLimitPolicy,
with a SaturationDetector), configured like the others and called on the event loop, without I/O.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, ClassVar, Mapping, Sequence

from ..datalayer.endpoint import Endpoint
from ..durations import parse_duration
from .types import CycleState, LLMRequest, MatchInfo, ProfileResult, SchedulingResult

if TYPE_CHECKING:
    from ..datalayer.store import EndpointStore
    from .profile import Profile


ALPHA, BETA = "alpha", "beta"


class Plugin:
    type_name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()   # older upstream type names that still load (with a warning)
    # upstream's stability level: an Alpha plugin is refused unless --allow-experimental-plugins is set
    stability: ClassVar[str] = BETA
    # a type upstream deprecated: the type that replaces it (loading it logs a DEPRECATION line)
    replaced_by: ClassVar[str] = ""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.type_name


# ---------------------------------------------------------------- scheduling extension points

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


# ---------------------------------------------------------------- request-path hooks

class PrepareRequest:
    """I/O a request needs before it can be scheduled (e.g. tokenizing through the model server).
    Only plugins whose `prepares` is true are asked; prepare() sets what it learns on the request
    and returns None when nothing is left to wait for, else an awaitable that finishes the job.
    The awaitable must not raise for an ordinary failure: the plugin falls back (and counts it)."""

    @property
    def prepares(self) -> bool:
        return True

    def prepare(self, request: LLMRequest) -> Awaitable[None] | None:
        raise NotImplementedError


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


class ResponseFirstChunk:
    """Called once when the first body chunk of a streamed (SSE) answer arrives: the first token, so
    `elapsed` (seconds since the request was scheduled) is the TTFT as the EPP sees it, prefill and any
    queueing on the pod (and, with P/D, the prefill leg and the KV transfer) included. Not called for
    answers that are not streamed (their first chunk is the whole answer)."""

    def response_first_chunk(self, request: LLMRequest, result: SchedulingResult, elapsed: float) -> None:
        raise NotImplementedError


class ResponseComplete:
    """Called once when the request's stream ends, answered, failed or cancelled."""

    def response_complete(self, request: LLMRequest, result: SchedulingResult, status: int | None,
                          usage=None) -> None:
        """usage: what the model server reported (prompt, completion, cached tokens), or None."""
        raise NotImplementedError


# ---------------------------------------------------------------- configuration and life-cycle hooks

class BindsPlugins:
    """Names other configured plugins (a producer, a decider, a tokenizer): resolved once every plugin
    of the config exists. Raise ValueError (it names the problem) when a reference cannot be met."""

    def bind(self, plugins: Mapping[str, Plugin]) -> None:
        raise NotImplementedError


class HasSubPlugins:
    """Owns plugins that are not in the config file (a producer of its own, a fallback): the scheduler
    collects their hooks as if they were configured."""

    def sub_plugins(self) -> list[Plugin]:
        raise NotImplementedError


class EndpointLifecycle:
    """Told when endpoints leave the pool, so per-endpoint state can be dropped."""

    def endpoints_removed(self, addresses: list[str]) -> None:
        raise NotImplementedError


class BackgroundTask:
    """Work that runs for the life of the process beside the servers (e.g. consuming KV events).
    The composition root starts run_background once and cancels it at shutdown."""

    async def run_background(self, store: "EndpointStore") -> None:
        raise NotImplementedError


# ---------------------------------------------------------------- capabilities other plugins consume

class PrefixMatchProducer:
    """Says how much of this request's prompt prefix each endpoint holds (approximate or precise);
    scorers, filters and P/D deciders read it. Computed once per request (kept in the cycle state)."""

    def match_info(self, state: CycleState, request: LLMRequest) -> MatchInfo:
        raise NotImplementedError


class PrefixMatchConsumer:
    """Reads a prefix-match producer. When no consumer names one and none is configured, the loader
    adds upstream's default approximate producer (as upstream's runner does)."""

    def wants_default_producer(self) -> bool:
        """True when this consumer names no producer and carries none of its own."""
        return False

    def match_producer(self) -> "PrefixMatchProducer | None":
        """The producer this consumer reads (once bound), for others that want the same numbers."""
        return None

    def carried_producer(self) -> "PrefixMatchProducer | None":
        """A producer this consumer carries itself (an older config put the hashing parameters on
        it); other consumers that name none share it."""
        return None


class IndexSize:
    """A prefix index whose size is exported (inference_extension_prefix_indexer_size)."""

    def index_size(self) -> int:
        raise NotImplementedError


class StateDumper:
    """Debug state for /debug/plugins/state (upstream's plugin.StateDumper): point-in-time state that metrics
    do not show, JSON-ready, bounded (capped lists, counts) and sanitized: endpoint identities and counts,
    never prompts, tokens or block hashes. Called on the event loop, on demand only."""

    def dump_state(self) -> Any:
        raise NotImplementedError


class KVEventStatus:
    """Consumes the model servers' KV events: per endpoint address, the state of its publisher as seen
    here (messages received, gaps, resets, a replay under way), for the pool view."""

    def kv_event_status(self) -> dict[str, dict[str, Any]]:
        raise NotImplementedError


class SaturationDetector:
    """How saturated a set of endpoints is: >= 1.0 means saturated (sheddable requests are dropped,
    flow control queues). A detector that scores endpoints with missing or stale metrics as saturated
    sets `stale_endpoints` to how many it found in its last call (flow control exports it)."""

    stale_endpoints: int | None = None

    def saturation(self, endpoints: Sequence[Endpoint]) -> float:
        raise NotImplementedError

    def reusable_until(self) -> float:
        """After saturation(): until when (monotonic seconds) the same endpoints read the same, as long as
        their metrics are not replaced meanwhile (a detector of scraped metrics: until one turns stale).
        0: the reading may change at any moment (e.g. in-flight counts), recompute every time."""
        return 0.0


# ---------------------------------------------------------------- flow control policies
# Used by epp/flowcontrol through these classes only. Items, flow queues and bands are handed to them
# as the views declared in scheduling/types.py (QueueItemView, FlowQueueView, BandView).

class OrderingPolicy(Plugin):
    """Which request of a flow is dispatched first: the item with the smallest order_key."""

    def order_key(self, item) -> tuple:
        raise NotImplementedError


class FairnessPolicy(Plugin):
    """Which flow of a priority band is served next (a flow = one fairness id in one band)."""

    def new_band_state(self) -> Any:
        """Per-band state this policy keeps between picks (e.g. a round-robin cursor); None if none."""
        return None

    def pick_flow(self, band, state: Any):
        """A flow queue of `band` with items, or None to dispatch nothing from this band now."""
        raise NotImplementedError


class UsageLimitPolicy(Plugin):
    """A dispatch ceiling per priority band: a band is gated (and every band below it) while the
    pool's saturation is at or above its ceiling."""

    def compute_limits(self, saturation: float, priorities: Sequence[int]) -> list[float]:
        """One ceiling per priority, priorities ordered highest first."""
        raise NotImplementedError


class InFlightLoad:
    """Per endpoint, the requests and prompt tokens this EPP has sent and not yet seen finish
    (inflight-load-producer); scorers, filters and detectors read it."""

    def load(self, address: str) -> tuple[int, int]:
        """(requests, tokens) in flight to the endpoint."""
        raise NotImplementedError

    def uncached_tokens(self, state: CycleState, request: LLMRequest, endpoint: Endpoint) -> int:
        """The tokens of this request's prompt the endpoint would have to compute (not cached there)."""
        raise NotImplementedError


class InFlightLoadConsumer:
    """Reads an in-flight load producer. When a consumer names none and none is configured, the
    loader adds upstream's default inflight-load-producer (as upstream's runner does)."""

    def wants_inflight_load(self) -> bool:
        return False


class TokenizedPromptConsumer:
    """Reads the prompt's tokens from a token-producer. When none is configured the loader adds
    upstream's default one (the estimate backend: no tokenizer, ~4 bytes per token)."""


class Parser(Plugin):
    """Claims request paths (suffix match, in requestHandler.parsers order; none claimed = every path)
    and maps each to the body grammar request control reads it with."""

    # path suffix (no slashes at either end) -> grammar; empty: a catch-all that forwards bodies as they are
    routes: ClassVar[dict[str, str]] = {}


class DataSource(Plugin):
    """A dataLayer source (e.g. metrics-data-source): what the data layer polls or listens to."""


class DataExtractor(Plugin):
    """A dataLayer extractor (e.g. core-metrics-extractor): what it takes out of a source's data."""


class Discovery(Plugin):
    """dataLayer.discovery: where the pool's endpoints come from instead of Kubernetes (file-discovery)."""


class Admitter(Plugin):
    """Decides, once the candidates are known and before scheduling, whether a request is admitted;
    request control answers a refusal with 500 "request cannot be admitted: <reason>" (upstream's)."""

    def admit(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> str | None:
        """None to admit, else the reason for refusing."""
        raise NotImplementedError


REGISTRY: dict[str, type[Plugin]] = {}   # type name (and aliases) -> class, filled by @register

# what the framework adds where a config leaves it out (upstream's defaults), by type name: the
# framework creates plugins through the registry and imports none
DEFAULT_PICKER = "max-score-picker"
DEFAULT_HANDLER = "single-profile-handler"
DEFAULT_PRODUCER = "approx-prefix-cache-producer"
DEFAULT_INFLIGHT = "inflight-load-producer"
DEFAULT_TOKENS = "token-producer"
DEFAULT_PARSERS = ("openai-parser", "anthropic-parser", "vllmhttp-parser")
DEFAULT_DETECTOR = "utilization-detector"
DEFAULT_METRICS_SOURCE, DEFAULT_METRICS_EXTRACTOR = "metrics-data-source", "core-metrics-extractor"
# flow control's defaults, created under their type names when a config does not declare them
DEFAULT_ORDERING_POLICY = "fcfs-ordering-policy"
DEFAULT_FAIRNESS_POLICY = "global-strict-fairness-policy"
DEFAULT_USAGE_LIMIT_POLICY = "static-usage-limit-policy"


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
    try:
        return parse_duration(str(v))
    except Exception:
        raise params_error(plugin, f"parameter {key} must be a duration like 200ms, got {v!r}") from None
