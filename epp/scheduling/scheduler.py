"""The scheduler: runs profiles (one for now; a profile handler picks among several later) and the
pre-request hooks of every plugin that has one."""
from __future__ import annotations

from time import perf_counter
from typing import Sequence

from ..datalayer.endpoint import Endpoint
from ..metrics import EPPMetrics
from .framework import EndpointLifecycle, PreRequest
from .plugins.kv_cache_utilization_scorer import KVCacheUtilizationScorer
from .plugins.max_score_picker import MaxScorePicker
from .plugins.prefix_cache_scorer import PrefixCacheScorer
from .plugins.queue_scorer import QueueScorer
from .profile import Profile, WeightedScorer
from .types import CycleState, LLMRequest, SchedulingResult


class Scheduler:
    def __init__(self, profiles: list[Profile], metrics: EPPMetrics | None = None) -> None:
        if not profiles:
            raise ValueError("at least one scheduling profile is needed")
        self.profiles = profiles
        self.metrics = metrics
        plugins = {id(p): p for prof in profiles
                   for p in [*prof.filters, *(ws.scorer for ws in prof.scorers), prof.picker]}
        self._pre_request = [p for p in plugins.values() if isinstance(p, PreRequest)]
        self._lifecycle = [p for p in plugins.values() if isinstance(p, EndpointLifecycle)]
        self._observe = self._observe_plugin if metrics else None
        self._hist_children: dict[tuple, object] = {}

    def _observe_plugin(self, point: str, plugin, seconds: float) -> None:
        key = (point, plugin.type_name, plugin.name)
        child = self._hist_children.get(key)
        if child is None:  # labels() is a dict lookup under a lock: do it once per plugin
            child = self._hist_children[key] = self.metrics.plugin_duration.labels(*key)
        child.observe(seconds)

    def plugins_of(self, cls) -> list:
        return [p for prof in self.profiles for p in [*prof.filters, *(ws.scorer for ws in prof.scorers), prof.picker]
                if isinstance(p, cls)]

    def schedule(self, request: LLMRequest, candidates: Sequence[Endpoint], explain: bool = False
                 ) -> tuple[SchedulingResult, CycleState]:
        t = perf_counter()
        state = CycleState()
        profile = self.profiles[0]
        result = SchedulingResult(profiles={profile.name: profile.run(state, request, candidates, self._observe, explain)},
                                  primary=profile.name)
        if result.targets:
            for hook in self._pre_request:
                hook.pre_request(state, request, result)
        if self.metrics:
            self.metrics.scheduler_e2e.observe(perf_counter() - t)
        return result, state

    def endpoints_removed(self, addresses: list[str]) -> None:
        for p in self._lifecycle:
            p.endpoints_removed(addresses)


def default_scheduler(metrics: EPPMetrics | None = None, max_endpoints: int = 1) -> Scheduler:
    """Upstream's default profile: queue 2, KV-cache utilization 2, approximate prefix 3, max score."""
    profile = Profile(
        name="default",
        picker=MaxScorePicker(maxNumOfEndpoints=max_endpoints),
        scorers=[WeightedScorer(QueueScorer(), 2), WeightedScorer(KVCacheUtilizationScorer(), 2),
                 WeightedScorer(PrefixCacheScorer(), 3)],
    )
    return Scheduler([profile], metrics)
