"""Prediction accuracy of prefix-aware routing, as metrics: for each answered request whose answer says
how many prompt tokens were cached, the tokens the prefix producer expected the pick to hold minus the
tokens the model server reported cached, by producer (approximate or precise, by name). Predictions in
pseudo-tokens (no tokenizer) are first scaled to the server's tokens (observer.predicted_tokens). A histogram
centred on 0 means the producer sees the caches; drifting positive means it believes in blocks that were
evicted (approximate routing losing track), negative that it misses blocks the pods hold."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from ..histogram import Histogram
from ..requestcontrol.usage import Usage
from ..scheduling.types import CachePrediction

_SIDE = (16, 64, 256, 1024, 4096, 16384, 65536)
ERROR_BUCKETS = tuple(-b for b in reversed(_SIDE)) + (-1, 0) + _SIDE
LABELS = ("plugin_type", "plugin_name")


class PredictionAccuracy:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.error = Histogram("epp_prefix_cache_prediction_error_tokens",
                               "Per request, prompt tokens the prefix-match producer predicted cached on the picked "
                               "endpoint minus the cached tokens the model server reported, by producer.",
                               LABELS, buckets=ERROR_BUCKETS, registry=registry)
        self.predicted = Counter("epp_prefix_cache_predicted_tokens",
                                 "Prompt tokens the prefix-match producer predicted cached on the picked endpoint "
                                 "(requests whose answer reported cached tokens).", LABELS, registry=registry)
        self.reported = Counter("epp_prefix_cache_reported_cached_tokens",
                                "Cached prompt tokens the model server reported for the same requests.",
                                LABELS, registry=registry)
        self.prompt = Counter("epp_prefix_cache_reported_prompt_tokens",
                              "Prompt tokens the model server reported for the same requests (the denominator of "
                              "the predicted and the reported hit rate).", LABELS, registry=registry)
        self._children: dict[tuple[str, str], tuple] = {}

    def observe(self, p: CachePrediction, predicted: int, usage: Usage) -> None:
        """predicted: p's cached tokens in the model server's tokens (observer.predicted_tokens)."""
        key = (p.plugin_type, p.plugin_name)
        c = self._children.get(key)
        if c is None:   # labels() once per producer, not per request
            c = self._children[key] = (self.error.labels(*key), self.predicted.labels(*key),
                                       self.reported.labels(*key), self.prompt.labels(*key))
        error, predicted_total, reported, prompt = c
        error.observe(predicted - usage.cached_tokens)
        predicted_total.inc(predicted)
        reported.inc(usage.cached_tokens)
        prompt.inc(usage.prompt_tokens)
