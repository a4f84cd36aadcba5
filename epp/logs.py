"""Logging as upstream's EPP writes it: one JSON object per line on stderr (zap's production encoder:
level, ts, logger, caller, msg, then key/values, error and stacktrace), verbosity from -v or
--zap-log-level. `--zap-encoder console` gives tab-separated text instead.

Levels: zap level L = -N enables logr V(0..N). Python's levels stand in for them: V(0)-V(3) are
INFO, V(4) is DEBUG, V(5) and beyond TRACE (5); zap's warn/error are WARNING/ERROR.
Key/values: `log.info("msg", extra={"kv": {"key": value}})`.
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
import traceback

import orjson

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
_NAMES = {TRACE: "trace", logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn",
          logging.ERROR: "error", logging.CRITICAL: "fatal"}
_STACK_FROM = {"info": logging.INFO, "error": logging.ERROR, "panic": logging.CRITICAL + 1}


def python_level(zap: int) -> int:
    """The Python level that lets through what zap level `zap` lets through."""
    if zap >= 2:
        return logging.ERROR
    if zap == 1:
        return logging.WARNING
    if zap >= -3:
        return logging.INFO
    if zap == -4:
        return logging.DEBUG
    return TRACE


def level_name(levelno: int) -> str:
    if levelno in _NAMES:
        return _NAMES[levelno]
    return "trace" if levelno < logging.DEBUG else "debug" if levelno < logging.INFO else "info" \
        if levelno < logging.WARNING else "warn" if levelno < logging.ERROR else "error"


def _ts(created: float, encoding: str):
    if encoding == "millis":
        return created * 1000.0
    if encoding == "nano":
        return int(created * 1e9)
    t = datetime.datetime.fromtimestamp(created).astimezone()
    if encoding == "iso8601":
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}" + t.strftime("%z")
    if encoding == "rfc3339":
        return t.replace(microsecond=0).isoformat()
    if encoding == "rfc3339nano":
        return t.isoformat()
    return created


def _caller(r: logging.LogRecord) -> str:
    return f"{os.path.basename(os.path.dirname(r.pathname))}/{r.filename}:{r.lineno}"


class _Base(logging.Formatter):
    def __init__(self, time_encoding: str = "epoch", stack_level: str = "error") -> None:
        super().__init__()
        self.time_encoding = time_encoding
        self.stack_from = _STACK_FROM[stack_level]

    def fields(self, r: logging.LogRecord) -> dict:
        d = {}
        kv = getattr(r, "kv", None)
        if kv:
            d.update(kv)
        if r.exc_info and r.exc_info[1] is not None:
            d["error"] = str(r.exc_info[1]) or type(r.exc_info[1]).__name__
        if r.levelno >= self.stack_from:
            if r.exc_info and r.exc_info[1] is not None:
                d["stacktrace"] = "".join(traceback.format_exception(*r.exc_info)).rstrip()
            else:
                stack = traceback.format_stack()
                # drop the logging module's own frames (the formatter, handler, logger calls)
                keep = [s for s in stack if f"{os.sep}logging{os.sep}" not in s and "epp/logs.py" not in s]
                d["stacktrace"] = "".join(keep).rstrip()
        return d


class JSONFormatter(_Base):
    def format(self, r: logging.LogRecord) -> str:
        d = {"level": level_name(r.levelno), "ts": _ts(r.created, self.time_encoding), "logger": r.name,
             "caller": _caller(r), "msg": r.getMessage()}
        d.update(self.fields(r))
        return orjson.dumps(d, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


class ConsoleFormatter(_Base):
    def __init__(self, time_encoding: str = "iso8601", stack_level: str = "error") -> None:
        super().__init__(time_encoding, stack_level)

    def format(self, r: logging.LogRecord) -> str:
        extra = self.fields(r)
        stack = extra.pop("stacktrace", None)
        parts = [str(_ts(r.created, self.time_encoding)), level_name(r.levelno).upper(), r.name, _caller(r),
                 r.getMessage()]
        if extra:
            parts.append(orjson.dumps(extra, default=str, option=orjson.OPT_NON_STR_KEYS).decode())
        line = "\t".join(parts)
        return f"{line}\n{stack}" if stack else line


def setup(zap_level: int = -2, encoder: str | None = None, time_encoding: str | None = None,
          stack_level: str | None = None) -> None:
    """Configures the root logger once (stderr)."""
    if (encoder or "json") == "console":
        fmt: logging.Formatter = ConsoleFormatter(time_encoding or "iso8601", stack_level or "error")
    else:
        fmt = JSONFormatter(time_encoding or "epoch", stack_level or "error")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(python_level(zap_level))
    # libraries' chatter stays at warnings unless tracing-level verbosity is asked for
    for noisy in ("asyncio", "aiohttp.access", "kubernetes_asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if zap_level > -5 else TRACE)
