"""metrics-data-source: where each model server's Prometheus metrics are read (added by default).

scheme (http), path (/metrics), port (the endpoint's own when unset), interval (every
--refresh-metrics-interval tick when unset; else rounded to a multiple of it). With scheme https:
insecureSkipVerify (true: model servers rarely have a certificate naming their pod IP), caCertPath
(the CA that signs the servers' certificates), clientCertPath/clientKeyPath (a client certificate).
The composition root hands these to the scraper.
"""
from __future__ import annotations

from ..framework import DataSource, need_bool, need_duration, need_int, need_str, params_error, register


@register
class MetricsDataSource(DataSource):
    type_name = "metrics-data-source"

    def __init__(self, name: str | None = None, scheme: str = "http", path: str = "/metrics", port: int | None = None,
                 insecureSkipVerify: bool = True, caCertPath: str = "", clientCertPath: str = "",
                 clientKeyPath: str = "", interval: str = "") -> None:
        super().__init__(name)
        t = self.type_name
        self.scheme = need_str(t, "scheme", scheme, ("http", "https"))
        self.path = need_str(t, "path", path) or "/metrics"
        if not self.path.startswith("/"):
            self.path = "/" + self.path
        self.port = None if port is None else need_int(t, "port", port, 1)
        if self.port is not None and self.port > 65535:
            raise params_error(t, f"invalid port {port}: must be between 1 and 65535")
        self.insecure_skip_verify = need_bool(t, "insecureSkipVerify", insecureSkipVerify)
        for key, v in (("caCertPath", caCertPath), ("clientCertPath", clientCertPath), ("clientKeyPath", clientKeyPath)):
            need_str(t, key, v)
        if bool(clientCertPath) != bool(clientKeyPath):
            raise params_error(t, "clientCertPath and clientKeyPath must be set together")
        self.ca_cert, self.client_cert, self.client_key = caCertPath, clientCertPath, clientKeyPath
        self.interval = need_duration(t, "interval", interval) if interval else 0.0

    def scrape_interval(self, base: float) -> float:
        """The scrape period: the base tick, or `interval` rounded to the nearest multiple of it."""
        if not self.interval or base <= 0:
            return base
        return max(1, round(self.interval / base)) * base
