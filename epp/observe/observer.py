"""The director's observer (requestcontrol.director.Director(observe=...)): the one place request control
reports decisions and answers to. Always: the prediction-accuracy metric when an answer reports cached
tokens. With the web view on (`recording`): a record of every decision, its first-byte time and outcome,
in a bounded ring buffer."""
from __future__ import annotations

import time
from time import perf_counter

from prometheus_client import CollectorRegistry

from ..headers import OBJECTIVE, OBJECTIVE_OLD
from ..requestcontrol.interface import Decision
from ..requestcontrol.usage import Usage, UsageReader
from ..scheduling.types import CachePrediction, LLMRequest
from .accuracy import PredictionAccuracy
from .decisions import PROMPT_CHARS, DecisionLog, Record


class _TimedReader(UsageReader):
    """A usage reader that also notes when the answer's first body chunk passed (TTFT, seen from epp)."""

    __slots__ = ("record",)

    def __init__(self, sse: bool, record: Record, on_first=None) -> None:
        super().__init__(sse, on_first)
        self.record = record

    def feed(self, chunk: bytes) -> None:
        UsageReader.feed(self, chunk)
        if not self.record.first_byte:
            self.record.first_byte = self.first_at


class Observer:
    def __init__(self, registry: CollectorRegistry, record: bool = False, size: int = 1000,
                 show_prompts: bool = False) -> None:
        self.accuracy = PredictionAccuracy(registry)
        self.recording = record
        self.log = DecisionLog(size, show_prompts) if record else None
        self.show_prompts = show_prompts

    # ------------------------------------------------------------------ request path (web view on)

    def _record(self, request: LLMRequest, t0: float, started: float) -> Record:
        rec = Record()
        rec.time = time.time()
        rec.request_id = request.request_id
        rec.model, rec.target_model, rec.api, rec.stream = request.model, request.target_model, request.api, request.stream
        rec.objective = request.headers.get(OBJECTIVE) or request.headers.get(OBJECTIVE_OLD, "")
        rec.priority = request.priority
        rec.prompt_tokens = (len(request.prompt) + 3) // 4
        if self.show_prompts:
            rec.prompt = request.prompt[:PROMPT_CHARS]
        rec.started = t0 or started   # TTFT and duration count from the request's arrival, as upstream's
        rec.overhead_s = started - t0 if t0 else None
        return rec

    def decided(self, decision: Decision, t0: float) -> None:
        rec = self._record(decision.request, t0, decision.started)
        rec.prompt_tokens = decision.tokens
        result = decision.result
        if result is not None:
            rec.primary = result.primary
            # the scores as the profiles computed them, by reference: turned into tables only when shown
            rec.profiles = {name: ([ep.address for ep in pr.targets], pr.raw, pr.filtered)
                            for name, pr in result.profiles.items()}
            rec.reasons = result.reasons
            pre = decision.prefill
            rec.prefill = pre.address if pre is not None else None
            rec.prediction = result.prediction
        else:
            rec.primary = ""
        decision.trace = rec
        self.log.add(rec)

    def rejected(self, request: LLMRequest, error, t0: float) -> None:
        """A request epp refused (saturated, no endpoint left): it shows in the feed with the reason."""
        rec = self._record(request, t0, perf_counter())
        rec.primary = ""
        rec.status = error.status
        rec.error = error.message if hasattr(error, "message") else str(error)
        rec.ended = rec.started
        self.log.add(rec)

    def usage_reader(self, record: Record, sse: bool, on_first=None) -> UsageReader:
        return _TimedReader(sse, record, on_first)

    # ------------------------------------------------------------------ response path

    def finished(self, decision: Decision, usage: Usage | None, status: int | None) -> None:
        result = decision.result
        predicted = None
        if (usage is not None and usage.cached_reported and result is not None and result.prediction is not None
                and (status is None or status < 400)):
            predicted = predicted_tokens(result.prediction, decision.tokens, usage)
            self.accuracy.observe(result.prediction, predicted, usage)
        rec = decision.trace
        if rec is not None:
            rec.ended = perf_counter()
            rec.status = status
            rec.usage = usage
            rec.predicted = predicted


def predicted_tokens(p: CachePrediction, estimated_prompt: int, usage: Usage) -> int:
    """The prediction in the model server's tokens. A producer without a tokenizer counts ~4-byte
    pseudo-tokens: its count is scaled by the server's prompt tokens over epp's estimate of them (the
    same 4-byte count), so prediction and report compare like with like."""
    if not p.estimated or estimated_prompt <= 0 or not usage.prompt_tokens:
        return p.cached_tokens
    return min(usage.prompt_tokens, round(p.cached_tokens * usage.prompt_tokens / estimated_prompt))
