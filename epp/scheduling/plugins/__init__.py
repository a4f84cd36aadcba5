"""Plugins, one module each, registered under their upstream type names when imported."""
from __future__ import annotations

import importlib
import pkgutil

_loaded = False


def load_all() -> None:
    """Import every plugin module so the registry knows every type (config files name them)."""
    global _loaded
    if _loaded:
        return
    for m in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{m.name}")
    _loaded = True
