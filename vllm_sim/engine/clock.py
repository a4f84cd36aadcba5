"""Engine time. The engine only reads `now()`; the server maps engine seconds onto wall-clock seconds
divided by the time scale (time_scale 10 = ten simulated seconds per real second), tests step a manual clock."""
from __future__ import annotations

import time


class Clock:
    def now(self) -> float:
        raise NotImplementedError

    def wall_delay(self, engine_seconds: float) -> float:
        """Real seconds to wait for `engine_seconds` of engine time to pass."""
        raise NotImplementedError


class ScaledClock(Clock):
    def __init__(self, time_scale: float = 1.0):
        if time_scale <= 0:
            raise ValueError("time scale must be positive")
        self.scale = time_scale
        self._t0 = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.scale

    def wall_delay(self, engine_seconds: float) -> float:
        return max(0.0, engine_seconds / self.scale)


class ManualClock(Clock):
    def __init__(self, t: float = 0.0):
        self.t = t

    def now(self) -> float:
        return self.t

    def advance_to(self, t: float) -> None:
        self.t = max(self.t, t)

    def wall_delay(self, engine_seconds: float) -> float:
        return 0.0
