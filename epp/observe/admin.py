"""The admin HTTP app: the /debug APIs and the web view, on the metrics port behind /metrics (served by
server/metrics_http.py, which applies --metrics-endpoint-auth and TLS to every path) and the web view on
--ui-port when given. A threaded WSGI server like prometheus_client's, so a slow scrape or an
open page never holds up the event loop; whatever it shows is gathered on the event loop (one short
callback per request or page update), where every piece of state it reads is changed.

    GET /metrics                     Prometheus (metrics port only)
    GET /debug/pool                  the endpoints as epp sees them, and the scheduling config
    GET /debug/plugins/state         upstream's plugin state dump
    GET /debug/decisions[?since=N&limit=M]   recent decisions, oldest first; resume with since=cursor (--ui)
    GET /ui                          the live page; /ui/events its server-sent events (--ui)
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.resources
import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import make_wsgi_app

from ..datalayer.store import EndpointStore
from ..scheduling.scheduler import Scheduler
from .decisions import DecisionLog
from .live import Reader
from .plugin_state import plugin_state
from .pool import config_view, pool_view

log = logging.getLogger(__name__)

STATIC = {"/ui": ("ui.html", "text/html; charset=utf-8"), "/ui/": ("ui.html", "text/html; charset=utf-8"),
          "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/ui/app.css": ("app.css", "text/css; charset=utf-8")}
MAX_STREAMS = 16          # open pages at once: each costs an update on the event loop per interval
DEFAULT_LIMIT = 100


class LoopBridge:
    """Runs a function on the event loop from a server thread and waits for its result."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> None:
        self.loop = loop
        self.timeout = timeout

    def call(self, fn: Callable[..., Any], *args) -> Any:
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as e:
                    fut.set_exception(e)
        self.loop.call_soon_threadsafe(run)   # RuntimeError once the loop is closed
        return fut.result(self.timeout)


def _json(start_response, doc: Any, status: str = "200 OK") -> list[bytes]:
    body = orjson.dumps(doc)
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
    return [body]


def _text(start_response, status: str, text: str, extra: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    body = (text + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                            *extra])
    return [body]


def _int(q: dict, key: str, default: int | None) -> int | None:
    v = q.get(key)
    if not v:
        return default
    try:
        return int(v[0])
    except ValueError:
        raise ValueError(f"{key} must be an integer, got {v[0]!r}") from None


class AdminApp:
    """The WSGI app. metrics: serve /metrics; ui: serve the page; log: the decision log (None: --ui off)."""

    def __init__(self, bridge: LoopBridge, store: EndpointStore, scheduler: Scheduler, staleness: float,
                 log_: DecisionLog | None, *, metrics_registry=None, ui: bool = False, interval: float = 0.5) -> None:
        self.bridge, self.store, self.scheduler, self.staleness = bridge, store, scheduler, staleness
        self.log = log_
        self.metrics = make_wsgi_app(metrics_registry) if metrics_registry is not None else None
        self.ui = ui and log_ is not None
        self.interval = interval
        self.closing = threading.Event()
        self._streams = 0
        self._lock = threading.Lock()
        self._static: dict[str, bytes] = {}
        if self.ui:
            root = importlib.resources.files(__package__) / "static"
            for name, _ in set(STATIC.values()):
                self._static[name] = (root / name).read_bytes()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics" and self.metrics is not None:
            return self.metrics(environ, start_response)
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _text(start_response, "405 Method Not Allowed", "method not allowed", [("Allow", "GET")])
        try:
            q = parse_qs(environ.get("QUERY_STRING", ""))
            if path == "/debug/pool":
                return _json(start_response, self.bridge.call(self._pool))
            if path == "/debug/plugins/state":
                return _json(start_response, self.bridge.call(plugin_state, self.scheduler.plugins))
            if path == "/debug/decisions":
                if self.log is None:
                    return _text(start_response, "404 Not Found",
                                 "decision recording is off: start epp with --ui to record decisions")
                return _json(start_response, self.bridge.call(self._decisions, _int(q, "since", None),
                                                              _int(q, "limit", None)))
            if self.ui:
                if path == "/":
                    return _text(start_response, "302 Found", "the live view is at /ui", [("Location", "/ui")])
                if path in STATIC:
                    name, ctype = STATIC[path]
                    body = self._static[name]
                    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body))),
                                              ("Cache-Control", "no-cache")])
                    return [body]
                if path == "/ui/events":
                    return self._events(environ, q, start_response)
        except ValueError as e:
            return _text(start_response, "400 Bad Request", str(e))
        except (RuntimeError, concurrent.futures.TimeoutError) as e:   # the loop is gone or stuck: shutting down
            return _text(start_response, "503 Service Unavailable", f"epp is not serving: {e or 'timeout'}")
        return _text(start_response, "404 Not Found", "not found")

    # ------------------------------------------------------------------ on the event loop

    def _pool(self) -> dict[str, Any]:
        return {"endpoints": pool_view(self.store, self.scheduler, self.staleness),
                "config": config_view(self.scheduler)}

    def _decisions(self, since: int | None, limit: int | None) -> dict[str, Any]:
        lg = self.log
        if limit is not None and limit < 1:
            raise ValueError("limit must be >= 1")
        if since is None:    # the newest ones
            recs = lg.since(0, limit or DEFAULT_LIMIT)
            missed, cursor = 0, lg.last
        else:                # everything after since, oldest first, limit at most: page on with cursor
            if since > lg.last or since < 0:   # a cursor from before a restart: start over
                since = 0
            recs = lg.since(since)
            missed = max(0, lg.oldest() - since - 1)   # fell out of the ring before this read
            if limit is not None:
                recs = recs[:limit]
            cursor = recs[-1].seq if recs else since
        return {"cursor": cursor, "latest": lg.last, "missed": missed, "buffer": lg.size,
                "decisions": [r.to_dict(lg.show_prompts) for r in recs]}

    # ------------------------------------------------------------------ server-sent events

    def _events(self, environ, q: dict, start_response):
        last = environ.get("HTTP_LAST_EVENT_ID")
        cursor = int(last) if last and last.isdigit() else _int(q, "since", None)
        with self._lock:
            if self._streams >= MAX_STREAMS:
                return _text(start_response, "503 Service Unavailable", f"at most {MAX_STREAMS} open pages")
            self._streams += 1
        try:
            reader = self.bridge.call(Reader, self.log, self.store, self.scheduler, self.staleness, cursor)
        except BaseException:
            with self._lock:
                self._streams -= 1
            raise
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-store"),
                                  ("X-Accel-Buffering", "no")])
        return self._stream(reader)

    def _stream(self, reader: Reader):
        try:
            yield b"retry: 1000\n\n"
            while True:
                try:
                    doc = self.bridge.call(reader.update)
                except (RuntimeError, concurrent.futures.TimeoutError):
                    return
                yield b"id: %d\ndata: %s\n\n" % (doc["cursor"], orjson.dumps(doc))
                if self.closing.wait(self.interval):
                    return
        finally:
            with self._lock:
                self._streams -= 1


class _Handler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:   # no access log on stderr (as prometheus_client's)
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True   # an open page must not keep the process alive


class AdminServer:
    """One listening admin app in a thread."""

    def __init__(self, app: AdminApp, addr: str, port: int) -> None:
        family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        server_class = type("AdminServer", (_Server,), {"address_family": family})
        self.app = app
        self.httpd = make_server(addr, port, app, server_class, handler_class=_Handler)
        self.port = self.httpd.server_port
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=f"admin :{self.port}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.app.closing.set()     # open event streams end at their next tick
        self.httpd.shutdown()
        self.httpd.server_close()


def admin_apps(loop: asyncio.AbstractEventLoop, ui_port: int, store: EndpointStore, scheduler: Scheduler,
               staleness: float, decisions: DecisionLog | None) -> tuple[AdminApp, AdminApp | None]:
    """The app behind the metrics port's server (everything but /metrics, which that server serves with
    its own authentication and TLS) and, with --ui-port, the web view's own app: the web view goes where
    --ui-port says, else on the metrics port."""
    bridge = LoopBridge(loop)
    own_ui = bool(ui_port) and decisions is not None
    on_metrics_port = AdminApp(bridge, store, scheduler, staleness, decisions, ui=not own_ui)
    return on_metrics_port, (AdminApp(bridge, store, scheduler, staleness, decisions, ui=True) if own_ui else None)
