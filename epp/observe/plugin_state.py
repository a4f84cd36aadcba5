"""/debug/plugins/state: upstream's plugin state dump (llm-d router pkg/epp/server/plugin_state_debug.go),
same path and shape: {timestamp (RFC 3339, UTC), plugins: {name: {name, type, state | message}}}. Plugins
that implement StateDumper give their state; the others are listed with upstream's message."""
from __future__ import annotations

import datetime
import logging
from typing import Any, Iterable

from ..scheduling.framework import Plugin, StateDumper

log = logging.getLogger(__name__)
UNSUPPORTED = "plugin does not support state collection"


def plugin_state(plugins: Iterable[Plugin]) -> dict[str, Any]:
    ts = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    out: dict[str, Any] = {}
    for p in plugins:
        entry: dict[str, Any] = {"name": p.name, "type": p.type_name}
        if isinstance(p, StateDumper):
            try:
                entry["state"] = p.dump_state()
            except Exception as e:  # one plugin's bug must not hide the others' state
                log.warning("plugin %s: dump_state failed: %s", p.name, e)
                entry["message"] = f"failed to dump plugin state: {e}"
        else:
            entry["message"] = UNSUPPORTED
        out[p.name] = entry
    return {"timestamp": ts, "plugins": out}
