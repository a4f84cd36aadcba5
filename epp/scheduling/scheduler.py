"""The scheduler: a profile handler chooses which profiles run over the candidates, each profile
filters, scores and picks, and the handler folds their results into one. Then the plugins' hooks:
pre-request (record what was sent where, add request headers) and, from request control, the
response hooks."""
from __future__ import annotations

from time import perf_counter
from typing import Awaitable, Iterable, Sequence

from .. import tracing
from ..datalayer.endpoint import Endpoint
from ..datalayer.store import EndpointStore
from ..metrics import EPPMetrics
from .framework import (DEFAULT_HANDLER, REGISTRY, Admitter, BackgroundTask, EndpointLifecycle, HasSubPlugins, IndexSize, Plugin,
                        PrepareRequest, PreRequest, ProfileHandler, ResponseComplete, ResponseFirstChunk,
                        ResponseHeaders)
from .plugins import load_all
from .profile import Profile
from .types import CANDIDATES, DEFER, PREDICTION, CycleState, LLMRequest, SchedulingResult


class Scheduler:
    def __init__(self, profiles: list[Profile], metrics: EPPMetrics | None = None,
                 handler: ProfileHandler | None = None, extra_plugins: Iterable[Plugin] = ()) -> None:
        if not profiles:
            raise ValueError("at least one scheduling profile is needed")
        self.profiles = {p.name: p for p in profiles}
        if len(self.profiles) != len(profiles):
            raise ValueError("scheduling profile names must be unique")
        if handler is None:
            load_all()
            handler = REGISTRY[DEFAULT_HANDLER]()
        self.handler = handler
        self.handler.validate(self.profiles)
        self.metrics = metrics
        self.plugins = _all_plugins([self.handler, *(p for prof in profiles for p in prof.plugins()), *extra_plugins])
        self._pre_request = [p for p in self.plugins if isinstance(p, PreRequest)]
        self._response_headers = [p for p in self.plugins if isinstance(p, ResponseHeaders)]
        self._response_complete = [p for p in self.plugins if isinstance(p, ResponseComplete)]
        self._first_chunk = [p for p in self.plugins if isinstance(p, ResponseFirstChunk)]
        self._lifecycle = [p for p in self.plugins if isinstance(p, EndpointLifecycle)]
        self._preparers = [p for p in self.plugins if isinstance(p, PrepareRequest) and p.prepares]
        self._admitters = [p for p in self.plugins if isinstance(p, Admitter)]
        self._observe = self._observe_plugin if metrics else None
        self._hist_children: dict[tuple, object] = {}

    def _observe_plugin(self, point: str, plugin, seconds: float) -> None:
        key = (point, plugin.type_name, plugin.name)
        child = self._hist_children.get(key)
        if child is None:  # labels() is a dict lookup under a lock: do it once per plugin
            child = self._hist_children[key] = self.metrics.plugin_duration.labels(*key)
        child.observe(seconds)

    def plugins_of(self, cls) -> list:
        return [p for p in self.plugins if isinstance(p, cls)]

    def prepare(self, request: LLMRequest) -> list[Awaitable[None]]:
        """What the request must wait for before it is scheduled (PrepareRequest hooks); usually nothing."""
        if not self._preparers:
            return []
        return [w for p in self._preparers if (w := p.prepare(request)) is not None]

    def admit(self, request: LLMRequest, candidates: Sequence[Endpoint]) -> str | None:
        """The first admitter's reason for refusing the request, or None when all admit it."""
        for a in self._admitters:
            t = perf_counter()
            reason = a.admit(request, candidates)
            if self._observe:
                self._observe("Admission", a, perf_counter() - t)
            if reason:
                return f"{a.name}: {reason}" if not reason.startswith(a.type_name) else reason
        return None

    def background_jobs(self, store: EndpointStore) -> list[tuple[str, Awaitable[None]]]:
        """(name, coroutine) of every plugin's background work, for the composition root to run."""
        return [(f"plugin {p.name}", p.run_background(store)) for p in self.plugins if isinstance(p, BackgroundTask)]

    def index_sizes(self) -> list[tuple[str, str, int]]:
        """(plugin name, plugin type, entries) of every prefix index the plugins keep."""
        return [(p.name, p.type_name, p.index_size()) for p in self.plugins if isinstance(p, IndexSize)]

    def index_size(self) -> int | None:
        """Entries in the prefix indexes the plugins keep; None when none keeps one."""
        sized = [p for p in self.plugins if isinstance(p, IndexSize)]
        return sum(p.index_size() for p in sized) if sized else None

    def schedule(self, request: LLMRequest, candidates: Sequence[Endpoint], explain: bool = False,
                 defer=None, record: bool = False) -> tuple[SchedulingResult, CycleState]:
        """Returns a result whose targets may be empty (every candidate filtered out). `defer(fn)`,
        when given, runs bookkeeping that the answer does not wait for (e.g. indexing the prompt's
        prefix) after the answer is on its way."""
        t = perf_counter()
        state = CycleState()
        state[CANDIDATES] = candidates
        if defer is not None:
            state[DEFER] = defer
        handler, profiles, observe = self.handler, self.profiles, self._observe
        results = {}
        parent = tracing.current() if tracing.on else None   # --tracing and this request sampled
        while True:
            chosen = handler.pick_profiles(state, request, profiles, results)
            if not chosen:
                break
            for prof in chosen:
                if parent is None:
                    results[prof.name] = prof.run(state, request, candidates, observe, explain, record=record)
                    continue
                span = tracing.start(tracing.SCHEDULING, "run_scheduler_profile", parent,
                                     {"llm_d.epp.scheduling.profile.name": prof.name})
                try:
                    results[prof.name] = prof.run(state, request, candidates, observe, explain, span, record)
                finally:
                    span.end()
        result = handler.process_results(state, request, results)
        if result.targets:
            headers = None
            for hook in self._pre_request:
                h = hook.pre_request(state, request, result)
                if h:
                    headers = (headers or []) + h
            result.headers = headers
            result.prediction = state.get(PREDICTION)
        if self.metrics:
            self.metrics.scheduler_e2e.observe(perf_counter() - t)
        return result, state

    def response_headers(self, request: LLMRequest, result: SchedulingResult, status: int | None
                         ) -> list[tuple[str, str]] | None:
        out = None
        for hook in self._response_headers:
            h = hook.response_headers(request, result, status)
            if h:
                out = (out or []) + h
        return out

    @property
    def wants_first_chunk(self) -> bool:
        """Whether any plugin wants to hear when a streamed answer's first chunk arrives."""
        return bool(self._first_chunk)

    def response_first_chunk(self, request: LLMRequest, result: SchedulingResult, elapsed: float) -> None:
        for hook in self._first_chunk:
            hook.response_first_chunk(request, result, elapsed)

    def response_complete(self, request: LLMRequest, result: SchedulingResult, status: int | None,
                          usage=None) -> None:
        for hook in self._response_complete:
            hook.response_complete(request, result, status, usage)

    def endpoints_removed(self, addresses: list[str]) -> None:
        for p in self._lifecycle:
            p.endpoints_removed(addresses)


def from_config(cfg, metrics: EPPMetrics | None = None) -> Scheduler:
    return Scheduler(cfg.profiles, metrics, handler=cfg.handler, extra_plugins=cfg.plugins.values())


def default_scheduler(metrics: EPPMetrics | None = None, max_endpoints: int = 1) -> Scheduler:
    """Upstream's default: queue 2, KV-cache utilization 2, approximate prefix 3, max-score picker."""
    from .config import DEFAULT_CONFIG, load
    return from_config(load(DEFAULT_CONFIG, "default config", max_endpoints), metrics)


def _all_plugins(roots: Iterable[Plugin]) -> list[Plugin]:
    """Every plugin once, sub-plugins (at any depth) included, in discovery order."""
    seen: dict[int, Plugin] = {}
    todo = list(roots)
    while todo:
        p = todo.pop(0)
        if p is None or id(p) in seen:
            continue
        seen[id(p)] = p
        if isinstance(p, HasSubPlugins):
            todo.extend(p.sub_plugins())
    return list(seen.values())
