"""What the simulated clients send: the stages of a benchmark scenario (the very request bodies, arrival
draws and stage structure of the wall-clock harness) or one stage replaying a trace. Agentic sessions
(load mode `sessions`) arrive as the harness draws them; each sends its turns one after another, the
next a think time after the previous answer, with the answer's text in its context.

A scenario's arrivals are drawn as the harness's load generator draws them: per stage a
random.Random(seed + stage), exponential gaps at the stage's rate in engine time (the harness draws at
rate x time_scale in wall time and scales back: the same numbers), the bodies from testbed.workload in
the same order, stages back to back, each ending when its last request is answered or its drain
timeout cuts the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from testbed.agentic import AgenticWorkload
from testbed.scenario import Scenario, stages
from testbed.workload import Item, Workload


@dataclass
class StagePlan:
    level: float                      # rate (req/s) or concurrency; 0 for a trace
    mode: str                         # poisson | concurrency | trace
    duration_s: float = 0.0
    drain_timeout_s: float = 600.0
    seed: int = 0
    max_requests: int = 0
    turns: int = 0                    # sessions: turns per session, sent one after another
    think_s: float = 0.0              # sessions: engine seconds between an answer and the next turn
    trace: list = field(default_factory=list)   # (offset s, Item) for a trace stage


class Load:
    """Stages and the request source they share (multi-turn sessions continue across stages)."""

    def __init__(self, stages_: list[StagePlan], source, model: str, api: str, name: str) -> None:
        self.stages, self.source, self.model, self.api, self.name = stages_, source, model, api, name

    def next_item(self) -> Item:
        return self.source.next()

    def done(self, item: Item, text: str) -> None:
        self.source.done(item, text)

    def wants_text(self) -> bool:
        return self.source.wants_text()


def from_scenario(s: Scenario, max_stages: int = 0) -> Load:
    ld = s.load
    if ld.mode not in ("poisson", "concurrency", "sessions"):
        raise ValueError(f"{s.path}: epp-plan does not simulate load mode {ld.mode!r}")
    sessions = ld.mode == "sessions"
    plans = [StagePlan(level=lvl, mode=ld.mode, duration_s=ld.duration_s, drain_timeout_s=ld.drain_timeout_s,
                       seed=s.workload.seed + i, max_requests=ld.max_requests,
                       turns=s.workload.turns if sessions else 0, think_s=s.workload.think_s if sessions else 0.0)
             for i, lvl in enumerate(stages(s)[:max_stages or None])]
    return Load(plans, AgenticWorkload(s) if sessions else Workload(s), s.pool.model, s.workload.api, s.name)


class _TraceSource:
    def next(self) -> Item:
        raise RuntimeError("a trace stage sends only its own requests")

    def done(self, item: Item, text: str) -> None:
        pass

    def wants_text(self) -> bool:
        return False


def from_trace(items: list[tuple[float, Item]], model: str, api: str, name: str,
               drain_timeout_s: float = 600.0) -> Load:
    return Load([StagePlan(level=0.0, mode="trace", drain_timeout_s=drain_timeout_s, trace=items)],
                _TraceSource(), model, api, name)
