"""Reads the few gauges the scheduler needs out of a Prometheus text page.

A vLLM page is tens of KB, mostly histograms nobody here reads; a full parse of it 1,300 times a
second would eat a core. Instead each wanted metric name is located with bytes.find (C speed) and
only its lines are parsed.
"""
from __future__ import annotations

from dataclasses import dataclass

from .endpoint import Metrics


Filters = tuple[tuple[str, str], ...]   # label name = value, all must hold


@dataclass(frozen=True, slots=True)
class MetricNames:
    waiting: str
    running: str
    kv_usage: tuple[str, ...]  # first one present wins (vLLM renamed it)
    lora_info: str = ""
    cache_info: str = ""
    # label selectors of a metric spec such as nv_trt_llm_request_metrics{request_type=waiting}, by field
    # (waiting, running, kv_usage, cache_info): two fields may read one metric with different labels
    filters: tuple[tuple[str, Filters], ...] = ()
    cache_block_label: str = "block_size"          # labels of cache_info holding the cache shape
    cache_blocks_label: str = "num_gpu_blocks"
    block_size_gauge: str = ""                     # or gauges holding it (TensorRT-LLM)
    num_blocks_gauge: str = ""
    # custom metrics: (attribute key, metric name, label selector)
    custom: tuple[tuple[str, str, Filters], ...] = ()


def parse_spec(spec: str) -> tuple[str, Filters]:
    """A metric spec as upstream writes it: name, optionally {label=value,...} (values may be quoted)."""
    spec = spec.strip()
    name, brace, rest = spec.partition("{")
    if not brace:
        return name, ()
    if not rest.endswith("}"):
        raise ValueError(f"metric spec {spec!r}: unterminated label selector")
    filters = []
    for part in filter(None, (x.strip() for x in rest[:-1].split(","))):
        k, eq, v = part.partition("=")
        if not eq or not k.strip():
            raise ValueError(f"metric spec {spec!r}: {part!r} is not label=value")
        filters.append((k.strip(), v.strip().strip('"')))
    return name.strip(), tuple(filters)


VLLM = MetricNames(
    waiting="vllm:num_requests_waiting",
    running="vllm:num_requests_running",
    kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    lora_info="vllm:lora_requests_info",
    cache_info="vllm:cache_config_info",
)
SGLANG = MetricNames(
    waiting="sglang:num_queue_reqs",
    running="sglang:num_running_reqs",
    kv_usage=("sglang:token_usage",),
)


class MetricsParseError(ValueError):
    pass


def _line_starts(page: bytes, key: bytes):
    """Starts of the lines holding samples of exactly `key`. A metric's samples stand together in the
    exposition format, so once its block has been read the rest of the page is not searched."""
    nkey = b"\n" + key
    klen = len(key)
    i = 0 if page.startswith(key) else page.find(nkey) + 1
    if i == 0 and not page.startswith(key):
        return
    while True:
        found = False
        while True:  # one block of lines
            if page.startswith(key, i):
                if page[i + klen:i + klen + 1] in (b"{", b" ", b"\t"):
                    found = True
                    yield i
            elif page[i:i + 1] != b"#":
                break  # past the block (comments such as # TYPE may sit inside it)
            j = page.find(b"\n", i)
            if j < 0:
                return
            i = j + 1
        if found:
            return
        j = page.find(nkey, i - 1)  # that block was a longer name with our prefix: look further
        if j < 0:
            return
        i = j + 1


def _samples(page: bytes, name: str) -> list[tuple[bytes, float]]:
    """(label text, value) of every sample of `name`."""
    key = name.encode()
    out = []
    for start in _line_starts(page, key):
        end = page.find(b"\n", start)
        line = page[start:end if end >= 0 else len(page)]
        rest = line[len(key):]
        labels = b""
        if rest[:1] == b"{":
            close = rest.rfind(b"}")
            if close < 0:
                raise MetricsParseError(f"unterminated labels in {line[:80]!r}")
            labels, rest = rest[1:close], rest[close + 1:]
        elif rest[:1] not in (b" ", b"\t"):
            continue  # a longer name that merely starts with ours
        fields = rest.split()
        if not fields:
            raise MetricsParseError(f"no value in {line[:80]!r}")
        try:
            out.append((labels, float(fields[0])))
        except ValueError:
            raise MetricsParseError(f"bad value in {line[:80]!r}") from None
    return out


def _label(labels: bytes, name: str) -> str | None:
    key = name.encode() + b'="'
    i = labels.find(key)
    while i > 0 and labels[i - 1:i] not in (b",", b" ", b"{"):
        i = labels.find(key, i + 1)
    if i < 0:
        return None
    j = labels.find(b'"', i + len(key))
    return labels[i + len(key):j].decode("utf-8", "replace") if j >= 0 else None


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(s for s in (value or "").split(",") if s)


def _selected(page: bytes, name: str, filters: Filters) -> list[tuple[bytes, float]]:
    found = _samples(page, name)
    if filters:
        found = [s for s in found if all(_label(s[0], k) == v for k, v in filters)]
    return found


def parse_metrics(page: bytes, names: MetricNames, now: float, previous: Metrics | None = None) -> Metrics:
    """Raises MetricsParseError when the page lacks the queue gauge or is malformed: a page without
    it is not a model server's, and pretending it is idle would attract traffic.

    With `previous`, the slow-changing series (LoRA adapters, cache configuration) are carried over
    from it instead of read: looking for a series a server does not publish scans the whole page."""
    if names.filters:
        return _parse_filtered(page, names, now, previous)
    waiting = _samples(page, names.waiting)
    if not waiting:
        raise MetricsParseError(f"no {names.waiting} on the page")
    m = Metrics(updated=now)
    m.waiting = sum(v for _, v in waiting)  # one series per engine (data parallel): the pod holds them all
    m.running = sum(v for _, v in _samples(page, names.running)) if names.running else 0.0
    if names.custom:
        m.attributes = _custom(page, names)
    for kv_name in names.kv_usage:
        kv = _samples(page, kv_name)
        if kv:
            m.kv_usage = max(v for _, v in kv)
            break
    if previous is not None:
        m.running_loras, m.waiting_loras, m.max_loras = previous.running_loras, previous.waiting_loras, previous.max_loras
        m.block_size, m.num_gpu_blocks = previous.block_size, previous.num_gpu_blocks
        return m
    if names.lora_info:
        series = _samples(page, names.lora_info)
        if series:
            labels, _ = max(series, key=lambda s: s[1])  # value is a timestamp: newest wins
            m.running_loras = _split(_label(labels, "running_lora_adapters"))
            m.waiting_loras = _split(_label(labels, "waiting_lora_adapters"))
            try:
                m.max_loras = int(_label(labels, "max_lora") or 0)
            except ValueError:
                pass
    _cache_shape(page, names, m, ())
    return m


def _cache_shape(page: bytes, names: MetricNames, m: Metrics, filters: Filters) -> None:
    if names.cache_info:
        series = _selected(page, names.cache_info, filters)
        if series:
            labels = series[0][0]
            try:
                m.block_size = int(float(_label(labels, names.cache_block_label) or 0))
                m.num_gpu_blocks = int(float(_label(labels, names.cache_blocks_label) or 0))
            except ValueError:
                pass
    for gauge, attr in ((names.block_size_gauge, "block_size"), (names.num_blocks_gauge, "num_gpu_blocks")):
        if gauge:
            spec, f = parse_spec(gauge)
            series = _selected(page, spec, f)
            if series:
                setattr(m, attr, int(series[0][1]))


def _custom(page: bytes, names: MetricNames) -> dict[str, float]:
    out = {}
    for key, name, filters in names.custom:
        series = _selected(page, name, filters)
        if series:
            out[key] = series[0][1]
    return out


def _parse_filtered(page: bytes, names: MetricNames, now: float, previous: Metrics | None) -> Metrics:
    """The same reading for an engine whose specs carry label selectors (slower; custom engines only)."""
    f = dict(names.filters)
    waiting = _selected(page, names.waiting, f.get("waiting", ()))
    if not waiting:
        raise MetricsParseError(f"no {names.waiting} on the page")
    m = Metrics(updated=now)
    m.waiting = sum(v for _, v in waiting)
    m.running = sum(v for _, v in _selected(page, names.running, f.get("running", ()))) if names.running else 0.0
    for kv_name in names.kv_usage:
        kv = _selected(page, kv_name, f.get("kv_usage", ()))
        if kv:
            m.kv_usage = max(v for _, v in kv)
            break
    if names.custom:
        m.attributes = _custom(page, names)
    if previous is not None:
        m.block_size, m.num_gpu_blocks = previous.block_size, previous.num_gpu_blocks
        return m
    _cache_shape(page, names, m, f.get("cache_info", ()))
    return m
