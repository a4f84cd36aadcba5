"""The pool's saturation as flow control gates on it: per P/D stage by the `llm-d.ai/role` label, the
effective value being the larger (upstream's processor). Prefill pods (prefill, encode-prefill) count
for prefill; decode pods and pods without a role for decode; pods that do both (prefill-decode, both,
encode-prefill-decode) for both; encode-only pods and unknown roles for neither (no traffic reaches
them). A pool with no pod in either stage is measured whole."""
from __future__ import annotations

from typing import Sequence

from ..datalayer.endpoint import Endpoint
from ..scheduling.framework import SaturationDetector

ROLE_LABEL = "llm-d.ai/role"
_PREFILL = frozenset({"prefill", "encode-prefill"})
_DECODE = frozenset({"decode", ""})
_BOTH = frozenset({"prefill-decode", "both", "encode-prefill-decode"})


class Stages:
    """The pool split by stage; rebuilt only when the endpoint snapshot changes."""

    __slots__ = ("snapshot", "pool", "prefill", "decode")

    def __init__(self, snapshot: Sequence[Endpoint]) -> None:
        self.snapshot = snapshot
        self.pool = [ep for ep in snapshot if ep.ready]
        prefill, decode = [], []
        for ep in self.pool:
            role = ep.labels.get(ROLE_LABEL, "")
            if role in _DECODE:
                decode.append(ep)
            elif role in _PREFILL:
                prefill.append(ep)
            elif role in _BOTH:
                prefill.append(ep)
                decode.append(ep)
        self.prefill = prefill
        self.decode = decode

    def saturation(self, detector: SaturationDetector) -> tuple[float, float | None, float | None, float]:
        """(effective, prefill or None, decode or None, until when the reading may be reused)."""
        until = float("inf")
        pre = dec = None
        if self.prefill:
            pre = detector.saturation(self.prefill)
            until = detector.reusable_until()
        if self.decode:
            dec = detector.saturation(self.decode)
            until = min(until, detector.reusable_until())
        if pre is None and dec is None:
            sat = detector.saturation(self.pool)
            return sat, None, None, detector.reusable_until()
        if pre is None:
            return dec, None, dec, until
        if dec is None:
            return pre, pre, None, until
        return max(pre, dec), pre, dec, until
