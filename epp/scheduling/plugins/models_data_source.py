"""models-data-source: polls each model server's /v1/models for the models it serves, for extractors
(models-data-extractor). No plugin of llm-d v0.10 that this EPP has reads that list, so the source is
validated and not polled (a warning says so)."""
from __future__ import annotations

import logging

from ..framework import DataSource, need_bool, need_duration, need_str, register

log = logging.getLogger(__name__)


@register
class ModelsDataSource(DataSource):
    type_name = "models-data-source"

    def __init__(self, name: str | None = None, scheme: str = "http", path: str = "/v1/models",
                 insecureSkipVerify: bool = True, caCertPath: str = "", clientCertPath: str = "",
                 clientKeyPath: str = "", interval: str = "") -> None:
        super().__init__(name)
        t = self.type_name
        need_str(t, "scheme", scheme, ("http", "https"))
        self.path = need_str(t, "path", path)
        need_bool(t, "insecureSkipVerify", insecureSkipVerify)
        for key, v in (("caCertPath", caCertPath), ("clientCertPath", clientCertPath), ("clientKeyPath", clientKeyPath)):
            need_str(t, key, v)
        self.interval = need_duration(t, "interval", interval) if interval else 0.0
        log.warning("%s: no plugin here reads the served-model list; %s is not polled", self.name, self.path)
