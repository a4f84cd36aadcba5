"""Prediction accuracy of prefix-aware routing, as metrics: for each answered request whose answer says
how many prompt tokens were cached, the tokens the prefix producer expected the pick to hold minus the
tokens the model server reported cached, by producer (approximate or precise, by name). Predictions in
pseudo-tokens (no tokenizer) are first scaled to the server's tokens (observer.predicted_tokens).

A histogram centred on 0 means the producer sees the caches; drifting positive means it believes in
blocks that were evicted (approximate routing losing track), negative that it misses blocks the pods
hold. The three counters give the predicted and the reported hit rate over any window."""
from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily

from ..histogram import Histogram
from ..requestcontrol.usage import Usage
from ..scheduling.types import CachePrediction

_SIDE = (16, 64, 256, 1024, 4096, 16384, 65536)
ERROR_BUCKETS = tuple(-b for b in reversed(_SIDE)) + (-1, 0) + _SIDE
LABELS = ["plugin_type", "plugin_name"]
ERROR = "epp_prefix_cache_prediction_error_tokens"
COUNTERS = (
    ("epp_prefix_cache_predicted_tokens", "Prompt tokens the prefix-match producer predicted cached on the picked "
     "endpoint (requests whose answer reported cached tokens)."),
    ("epp_prefix_cache_reported_cached_tokens", "Cached prompt tokens the model server reported for the same requests."),
    ("epp_prefix_cache_reported_prompt_tokens", "Prompt tokens the model server reported for the same requests (the "
     "denominator of the predicted and the reported hit rate)."),
)


class PredictionAccuracy:
    """Observed on the event loop only; the counters are plain ints read at scrape time (no lock per
    request, as epp.histogram)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.error = Histogram(ERROR, "Per request, prompt tokens the prefix-match producer predicted cached on the "
                               "picked endpoint minus the cached tokens the model server reported, by producer.",
                               LABELS, buckets=ERROR_BUCKETS, registry=registry)
        self._sums: dict[tuple[str, str], list[int]] = {}   # (type, name) -> [predicted, reported, prompt]
        self._errors: dict[tuple[str, str], object] = {}
        registry.register(self)

    def observe(self, p: CachePrediction, predicted: int, usage: Usage) -> None:
        """predicted: p's cached tokens in the model server's tokens (observer.predicted_tokens)."""
        key = (p.plugin_type, p.plugin_name)
        sums = self._sums.get(key)
        if sums is None:   # labels() once per producer, not per request
            sums = self._sums[key] = [0, 0, 0]
            self._errors[key] = self.error.labels(*key)
        self._errors[key].observe(predicted - usage.cached_tokens)
        sums[0] += predicted
        sums[1] += usage.cached_tokens
        sums[2] += usage.prompt_tokens

    def describe(self):
        return [CounterMetricFamily(name, doc, labels=LABELS) for name, doc in COUNTERS]

    def collect(self):
        fams = [CounterMetricFamily(name, doc, labels=LABELS) for name, doc in COUNTERS]
        for key, sums in list(self._sums.items()):
            for fam, v in zip(fams, list(sums)):
                fam.add_metric(list(key), v)
        yield from fams
