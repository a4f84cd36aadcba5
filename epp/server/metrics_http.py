"""The metrics server (--metrics-port): /metrics in Prometheus text or OpenMetrics, served from a thread
(rendering never blocks the request loop), optionally over TLS (--metrics-cert-dir, client
certificates with --metrics-client-ca-file) and behind Kubernetes authentication and authorization
(--metrics-endpoint-auth) as upstream's controller-runtime filter does it: a bearer token checked by
a TokenReview, then a SubjectAccessReview for the non-resource path and the lower-cased method."""
from __future__ import annotations

import os
import socket
import ssl
import threading
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from socketserver import ThreadingMixIn

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

# authorize(token or None, path, verb) -> None when allowed, else (HTTP status, message)
Authorize = Callable[[str | None, str, str], "tuple[int, str] | None"]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # access logs are not wanted on stderr
        pass


def _family(host: str) -> int:
    try:
        infos = socket.getaddrinfo(host or None, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        return infos[0][0]
    except OSError:
        return socket.AF_INET


def tls_context(cert_dir: str, client_ca: str = "") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(os.path.join(cert_dir, "tls.crt"), os.path.join(cert_dir, "tls.key"))
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class MetricsServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry = REGISTRY,
                 authorize: Authorize | None = None, tls: ssl.SSLContext | None = None, others=None) -> None:
        """others: a WSGI app for every other path (the /debug APIs and the web view), behind the same
        authentication and TLS."""
        self.metrics_app = make_wsgi_app(registry)
        self.others = others
        self.authorize = authorize
        server_cls = type("MetricsHTTPServer", (_Server,), {"address_family": _family(host)})
        self.httpd = make_server(host, port, self._app, server_cls, handler_class=_Quiet)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics server", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _app(self, environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        if self.authorize is not None:
            auth = environ.get("HTTP_AUTHORIZATION", "")
            scheme, _, token = auth.partition(" ")
            denied = self.authorize(token.strip() if scheme.lower() == "bearer" and token.strip() else None,
                                    path, environ.get("REQUEST_METHOD", "GET").lower())
            if denied is not None:
                status, message = denied
                return _plain(start_response, status, message)
        if path == "/metrics":
            return self.metrics_app(environ, start_response)
        if self.others is not None:
            return self.others(environ, start_response)
        return _plain(start_response, 404, "404 page not found")


_REASONS = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 500: "Internal Server Error"}


def _plain(start_response, status: int, message: str):
    body = (message + "\n").encode()
    start_response(f"{status} {_REASONS.get(status, '')}", [("Content-Type", "text/plain; charset=utf-8"),
                                                            ("X-Content-Type-Options", "nosniff"),
                                                            ("Content-Length", str(len(body)))])
    return [body]
