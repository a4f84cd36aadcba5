"""k8s-notification-source: watches one Kubernetes kind (group, version, kind) for its extractors.
llm-d v0.10 ships no extractor for it (they are user-provided), so here the source is validated and
watches nothing; a warning says so."""
from __future__ import annotations

import logging

from ..framework import DataSource, need_str, params_error, register

log = logging.getLogger(__name__)


@register
class K8sNotificationSource(DataSource):
    type_name = "k8s-notification-source"

    def __init__(self, name: str | None = None, group: str = "", version: str = "", kind: str = "") -> None:
        t = self.type_name
        if not version or not kind:
            raise params_error(t, "version and kind are required for k8s-notification-source")
        self.gvk = (need_str(t, "group", group), need_str(t, "version", version), need_str(t, "kind", kind))
        super().__init__(name or f"{group}/{version}, Kind={kind}")
        log.warning("%s: no extractor here consumes Kubernetes %s events; nothing is watched", self.name, kind)
