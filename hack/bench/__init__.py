"""Routing benchmark harness: one scenario file -> the same simulated vLLM pool behind each router,
one load generator, tables, JSON and plots. See docs/benchmarks.md and `python -m hack.bench --help`."""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
HACK = os.path.dirname(HERE)
ROOT = os.path.dirname(HACK)
for _p in (HACK, ROOT):        # hack's helper modules (netutil, envoy_bootstrap, ...) and the epp / vllm_sim packages
    if _p not in sys.path:
        sys.path.insert(0, _p)
