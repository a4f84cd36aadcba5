"""static-usage-limit-policy: the same dispatch ceiling, `threshold` (default 1.0: no gating below full
saturation), for every priority band. A lower value keeps headroom: at 0.8 nothing is dispatched once
the pool reads 80% saturated. Flow control's default usage-limit policy."""
from __future__ import annotations

import logging

from ..framework import UsageLimitPolicy, need_number, register

log = logging.getLogger(__name__)


@register
class StaticUsageLimitPolicy(UsageLimitPolicy):
    type_name = "static-usage-limit-policy"

    def __init__(self, name: str | None = None, threshold: float = 1.0) -> None:
        super().__init__(name)
        self.threshold = need_number(self.type_name, "threshold", threshold)
        if not 0.0 < self.threshold <= 1.0:
            # upstream documents (0, 1] but does not enforce it; a config that loads there loads here
            log.warning("%s: threshold %g is outside (0, 1]", self.type_name, self.threshold)

    def compute_limits(self, saturation, priorities):
        return [self.threshold] * len(priorities)
