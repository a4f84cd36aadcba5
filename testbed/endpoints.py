"""The endpoints file epp (--endpoints-file) and epp-sidecar (its SSRF allowlist) read."""
from __future__ import annotations

import os

import yaml


def write_endpoints(path, endpoints, labels: dict | None = None) -> None:
    """Writes the file in one atomic step (a reader polling it never sees half a file).

    endpoints: loopback ports (int) or addresses ("ip:port"), named pod-0, pod-1, ... by position;
    (name, address) or (name, address, labels) tuples; or anything with .name and .address (a stand-in
    pod). labels: for the entries without their own (none: no labels)."""
    entries = []
    for i, e in enumerate(endpoints):
        own = None
        if isinstance(e, int):
            name, address = f"pod-{i}", f"127.0.0.1:{e}"
        elif isinstance(e, str):
            name, address = f"pod-{i}", e
        elif isinstance(e, tuple):
            name, address, *rest = e
            own = rest[0] if rest else None
        else:
            name, address = e.name, e.address
        entry = {"name": name, "address": address}
        if own or labels:
            entry["labels"] = own or labels
        entries.append(entry)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump({"endpoints": entries}, f, sort_keys=False)
    os.replace(tmp, path)
