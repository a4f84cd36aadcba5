"""file-discovery: the pool's endpoints from a YAML or JSON file instead of Kubernetes
(dataLayer.discovery.pluginRef). The file lists endpoints {name, namespace, address, port, labels};
with watchFile the composition root re-reads it when it changes."""
from __future__ import annotations

from ..framework import Discovery, need_bool, need_str, params_error, register


@register
class FileDiscovery(Discovery):
    type_name = "file-discovery"

    def __init__(self, name: str | None = None, path: str = "", watchFile: bool = False) -> None:
        super().__init__(name)
        t = self.type_name
        self.path = need_str(t, "path", path)
        if not self.path:
            raise params_error(t, "path is required")
        self.watch = need_bool(t, "watchFile", watchFile)
