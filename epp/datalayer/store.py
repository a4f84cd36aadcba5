"""The pool's endpoints: the one place discovery writes and everything else reads."""
from __future__ import annotations

import logging
from typing import Callable, Iterable

from .endpoint import Endpoint

log = logging.getLogger(__name__)


class EndpointStore:
    """Endpoints by address. Readers take `snapshot()`, a tuple that is replaced, never mutated, so
    a request that scheduled on it never sees a half-applied update."""

    def __init__(self) -> None:
        self._by_address: dict[str, Endpoint] = {}
        self._snapshot: tuple[Endpoint, ...] = ()
        self.synced = False  # discovery has delivered a full set at least once
        self._listeners: list[Callable[[list[Endpoint], list[Endpoint]], None]] = []

    def on_change(self, fn: Callable[[list[Endpoint], list[Endpoint]], None]) -> None:
        """fn(added, removed) after every replace()."""
        self._listeners.append(fn)

    def snapshot(self) -> tuple[Endpoint, ...]:
        return self._snapshot

    def get(self, address: str) -> Endpoint | None:
        return self._by_address.get(address)

    def replace(self, endpoints: Iterable[Endpoint]) -> None:
        """Make the pool exactly `endpoints`; kept addresses keep their object (and its metrics)."""
        new: dict[str, Endpoint] = {}
        added: list[Endpoint] = []
        for ep in endpoints:
            old = self._by_address.get(ep.address)
            if old is None:
                new[ep.address] = ep
                added.append(ep)
            else:
                old.name, old.labels, old.ready, old.namespace = ep.name, ep.labels, ep.ready, ep.namespace
                new[ep.address] = old
        removed = [ep for addr, ep in self._by_address.items() if addr not in new]
        self._by_address = new
        self._snapshot = tuple(new.values())
        self.synced = True
        if added or removed:
            log.info("pool now has %d endpoints (+%d, -%d)", len(new), len(added), len(removed))
        for fn in self._listeners:
            fn(added, removed)
