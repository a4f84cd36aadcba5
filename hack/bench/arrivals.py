"""Arrival times for open-loop stages: Poisson, or Poisson switched on and off (bursts).

With on/off, arrivals come only during the first `on` seconds of every `on + off` and at
rate x (on + off) / on, so a stage's mean rate is still `rate`: the same work as a steady stage, offered
in bursts. Times are drawn in "on-time" (the on windows laid end to end) and mapped back, so the process
is exactly Poisson within each window.
"""
from __future__ import annotations

import math
import random


class Arrivals:
    def __init__(self, rng: random.Random, rate: float, start: float, on: float = 0.0, off: float = 0.0) -> None:
        self.rng, self.start, self.on, self.off = rng, start, on, off
        self.bursty = on > 0 and off > 0
        self.rate = rate * (on + off) / on if self.bursty else rate
        self.u = 0.0          # on-time elapsed

    def next(self) -> float:
        """The next arrival's time (same clock as `start`)."""
        self.u += self.rng.expovariate(self.rate)
        if not self.bursty:
            return self.start + self.u
        cycles = math.floor(self.u / self.on)
        return self.start + cycles * (self.on + self.off) + (self.u - cycles * self.on)
