"""Prometheus metrics for the request path, written from the event loop only: a histogram's observe()
is a bisect and two list updates, a counter's inc() one addition, with no lock. prometheus_client's
take a lock (and its histogram walks the buckets in Python) on every update, which at some thirty
updates per request was a measurable share of a decision.

Upstream writes many series twice, under llm-d's llm_d_epp_* name and GIE's older one, the older one
with fewer labels. Those are views here: the older family is computed when Prometheus scrapes, by
summing the llm-d family's series over the labels it lacks, so a request updates each metric once.

Updates happen on the event loop thread only; the exposition thread reads plain ints and floats,
which is safe under the GIL (a scrape may see one observation half-counted, never corrupt).
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import CollectorRegistry


class _Child:
    __slots__ = ("counts", "sum", "_bounds")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot: above the highest bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class _Family:
    """Children by label values; `labels()` is a dict lookup (callers keep the child)."""

    child_type: type = _Value

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        if not self.labelnames:
            self._children[()] = self._new()
        if registry is not None:
            registry.register(self)

    def _new(self):
        return self.child_type()

    def labels(self, *values: str):
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            child = self._children[values] = self._new()
        return child

    def describe(self):
        return [self._family(self.name, self.documentation, self.labelnames)]

    def view(self, name: str, documentation: str, labelnames: Sequence[str] = (),
             registry: CollectorRegistry | None = None) -> "View":
        """Another family whose series are this one's summed over the labels it leaves out (each of
        `labelnames` must be one of this family's)."""
        return View(self, name, documentation, labelnames, registry)

    def collect(self):
        fam = self._family(self.name, self.documentation, self.labelnames)
        for values, child in list(self._children.items()):
            self._add(fam, list(values), child)
        yield fam


class Counter(_Family):
    @staticmethod
    def _family(name, documentation, labels):
        return CounterMetricFamily(name, documentation, labels=labels)

    @staticmethod
    def _add(fam, values, child):
        fam.add_metric(values, child.value)

    @staticmethod
    def _merge(acc, child):
        acc = acc or _Value()
        acc.value += child.value
        return acc

    def inc(self, amount: float = 1.0) -> None:
        self._children[()].inc(amount)


class Gauge(Counter):
    @staticmethod
    def _family(name, documentation, labels):
        return GaugeMetricFamily(name, documentation, labels=labels)

    def dec(self, amount: float = 1.0) -> None:
        self._children[()].dec(amount)

    def set(self, value: float) -> None:
        self._children[()].set(value)


class Histogram(_Family):
    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 buckets: Iterable[float] = (), registry: CollectorRegistry | None = None) -> None:
        self.bounds = tuple(sorted(float(b) for b in buckets if b != float("inf")))
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> _Child:
        return _Child(self.bounds)

    def observe(self, value: float) -> None:
        self._children[()].observe(value)

    @staticmethod
    def _family(name, documentation, labels):
        return HistogramMetricFamily(name, documentation, labels=labels)

    def _add(self, fam, values, child) -> None:
        counts = list(child.counts)
        cumulative, running = [], 0
        for bound, c in zip(self.bounds, counts):
            running += c
            cumulative.append((_fmt(bound), running))
        running += counts[-1]
        cumulative.append(("+Inf", running))
        fam.add_metric(values, cumulative, child.sum)

    def _merge(self, acc, child):
        acc = acc or _Child(self.bounds)
        acc.counts = [a + b for a, b in zip(acc.counts, child.counts)]
        acc.sum += child.sum
        return acc


class View:
    """A family read from another: its series are the source's, summed over the labels it leaves out."""

    def __init__(self, source: _Family, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry | None) -> None:
        self.source, self.name, self.documentation = source, name, documentation
        self.labelnames = tuple(labelnames)
        self._pick = [source.labelnames.index(n) for n in self.labelnames]
        if registry is not None:
            registry.register(self)

    def describe(self):
        return [self.source._family(self.name, self.documentation, self.labelnames)]

    def collect(self):
        src, pick = self.source, self._pick
        groups: dict[tuple[str, ...], object] = {}
        for values, child in list(src._children.items()):
            key = tuple(values[i] for i in pick)
            groups[key] = src._merge(groups.get(key), child)
        fam = src._family(self.name, self.documentation, self.labelnames)
        for key, child in groups.items():
            src._add(fam, list(key), child)
        yield fam


def _fmt(b: float) -> str:
    return repr(float(b))
