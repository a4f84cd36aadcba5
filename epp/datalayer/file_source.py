"""Discovery from a YAML endpoints file, re-read when it changes.

    endpoints:
    - name: pod-0
      address: "10.0.0.1:8000"
      labels: {llm-d.ai/role: decode}
    - name: pod-1                 # llm-d's file-discovery form: the port apart, a namespace
      namespace: default
      address: "10.0.0.2"
      port: "8000"

The file is polled (stat) rather than watched with inotify so that a Kubernetes ConfigMap's symlink
swap, an editor's rename-over and a plain rewrite all count as changes.
"""
from __future__ import annotations

import asyncio
import logging
import os

import yaml

from .address import canonical
from .endpoint import Endpoint
from .store import EndpointStore

log = logging.getLogger(__name__)

_ENDPOINT_KEYS = {"name", "address", "labels", "ready", "port", "namespace"}


class EndpointsFileError(ValueError):
    pass


def parse_endpoints(text: str, source: str = "endpoints file") -> list[Endpoint]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise EndpointsFileError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(doc, dict) or set(doc) - {"endpoints"}:
        raise EndpointsFileError(f"{source}: must be a mapping with the single key 'endpoints'")
    items = doc.get("endpoints")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise EndpointsFileError(f"{source}: 'endpoints' must be a list")
    out: list[Endpoint] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{source}: endpoints[{i}]"
        if not isinstance(item, dict):
            raise EndpointsFileError(f"{where}: must be a mapping with name, address, labels")
        unknown = set(item) - _ENDPOINT_KEYS
        if unknown:
            raise EndpointsFileError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ENDPOINT_KEYS)}")
        addr = item.get("address")
        if item.get("port") is not None:
            port = str(item["port"]).strip()
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise EndpointsFileError(f"{where}: port must be an integer 1-65535, got {item['port']!r}")
            addr = f"[{addr}]:{port}" if isinstance(addr, str) and ":" in addr else f"{addr}:{port}"
        try:
            address = canonical(addr)
        except ValueError as e:
            raise EndpointsFileError(f"{where}: {e}") from None
        if address in seen:
            raise EndpointsFileError(f"{where}: duplicate address {address}")
        seen.add(address)
        name = item.get("name", address)
        if not isinstance(name, str) or not name:
            raise EndpointsFileError(f"{where}: name must be a non-empty string")
        labels = item.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(k, str) for k in labels):
            raise EndpointsFileError(f"{where}: labels must be a mapping of strings")
        ready = item.get("ready", True)
        if not isinstance(ready, bool):
            raise EndpointsFileError(f"{where}: ready must be true or false")
        namespace = item.get("namespace") or "default"
        if not isinstance(namespace, str):
            raise EndpointsFileError(f"{where}: namespace must be a string")
        out.append(Endpoint(name=name, address=address, labels={k: str(v) for k, v in labels.items()}, ready=ready,
                            namespace=namespace))
    return out


class EndpointsFile:
    """Loads the file into the store at start (errors are fatal there) and on every change later
    (errors are logged and the last good set stays)."""

    def __init__(self, path: str, store: EndpointStore, poll_interval: float = 1.0) -> None:
        self.path = path
        self.store = store
        self.poll_interval = poll_interval
        self._stamp: tuple | None = None
        self.reload_errors = 0

    def _stat(self) -> tuple:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> None:
        """Raises EndpointsFileError (or OSError) when the file cannot be used."""
        stamp = self._stat()
        with open(self.path, encoding="utf-8") as f:
            text = f.read()
        endpoints = parse_endpoints(text, self.path)
        self._stamp = stamp
        self.store.replace(endpoints)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                if self._stat() == self._stamp:
                    continue
                self.load()
                log.info("reloaded %s: %d endpoints", self.path, len(self.store.snapshot()))
            except (OSError, UnicodeDecodeError, EndpointsFileError) as e:
                self.reload_errors += 1
                try:
                    self._stamp = self._stat()  # do not log the same bad version every poll
                except OSError:
                    pass
                log.error("endpoints file not reloaded, keeping the last good set of %d: %s",
                          len(self.store.snapshot()), e)
