"""Routing benchmark harness: one scenario file -> the same simulated vLLM pool behind each router,
one load generator, tables, JSON and plots. See docs/benchmarks.md and `python -m hack.bench --help`.
Run from the repository root (`hack/bench.sh` does); its helpers come from the installed `testbed`."""
from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
