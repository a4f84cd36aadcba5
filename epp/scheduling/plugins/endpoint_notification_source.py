"""endpoint-notification-source: tells its extractors when endpoints join or leave the pool. Here every
plugin that keeps per-endpoint state hears of departures through the framework's EndpointLifecycle
hook, so the source only names that wiring (e.g. the precise producer as its extractor)."""
from __future__ import annotations

from ..framework import DataSource, register


@register
class EndpointNotificationSource(DataSource):
    type_name = "endpoint-notification-source"
