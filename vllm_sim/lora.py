"""LoRA adapters the server knows: static ones from --lora-modules plus runtime loads and unloads."""
from __future__ import annotations

import json

from .errors import APIError, bad_request


def parse_modules(items: list[str] | None) -> dict[str, str]:
    """vLLM accepts `name=path` or a JSON object {"name", "path", "base_model_name"} per item."""
    out: dict[str, str] = {}
    for it in items or []:
        it = it.strip()
        if it.startswith("{"):
            d = json.loads(it)
            out[d["name"]] = d["path"]
        elif "=" in it:
            name, path = it.split("=", 1)
            out[name] = path
        else:
            raise ValueError(f"invalid --lora-modules entry {it!r}: use name=path or JSON")
    return out


class LoraRegistry:
    def __init__(self, enabled: bool, modules: dict[str, str]):
        self.enabled = enabled
        self.adapters: dict[str, tuple[int, str]] = {}   # name -> (lora id, path)
        self._next = 1
        for name, path in modules.items():
            self._add(name, path)

    def _add(self, name: str, path: str) -> None:
        self.adapters[name] = (self._next, path)
        self._next += 1

    def id_of(self, name: str) -> int | None:
        a = self.adapters.get(name)
        return a[0] if a else None

    def name_of(self, lora_id: int) -> str | None:
        for name, (i, _) in self.adapters.items():
            if i == lora_id:
                return name
        return None

    def load(self, body: dict) -> str:
        if not self.enabled:
            raise bad_request("LoRA is not enabled (start with --enable-lora)")
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not isinstance(path, str) or not name or not path:
            raise bad_request("Both 'lora_name' and 'lora_path' must be provided.")
        if name in self.adapters:
            raise bad_request(f"The lora adapter '{name}' has already been loaded.")
        self._add(name, path)
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, body: dict) -> str:
        if not self.enabled:
            raise bad_request("LoRA is not enabled (start with --enable-lora)")
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            raise bad_request("'lora_name' needs to be provided to unload a LoRA adapter.")
        if name not in self.adapters:
            raise APIError(404, f"The lora adapter '{name}' cannot be found.")
        del self.adapters[name]
        return f"Success: LoRA adapter '{name}' removed successfully."
