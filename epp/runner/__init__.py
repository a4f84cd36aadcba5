"""The composition root: the one place that builds the EPP from its parts (endpoint sources, scheduler,
request control, transports, health, metrics) and runs them, background work included. Transports,
request control and the framework only receive what they need; none of them builds another."""
from __future__ import annotations

from .serve import scheduling_config, serve

__all__ = ["scheduling_config", "serve"]
