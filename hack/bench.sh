#!/usr/bin/env bash
# The routing benchmark harness (docs/benchmarks.md):
#   hack/bench.sh run hack/bench/scenarios/shared-prefix.yaml [--quick] [--routers a,b]
#   hack/bench.sh run precise-kv
#   hack/bench.sh overhead [--quick]
#   hack/bench.sh epp-overhead [--quick]
#   hack/bench.sh pinned [--quick]          (closed-loop wrk, proxy pinned to core 0; --help)
#   hack/bench.sh list
# Sets up .venv on first use; peers (sglang-router, vllm-router) and matplotlib are pip-installed into
# their own venvs under out/bench-venvs/ when a run needs them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh >&2
exec .venv/bin/python -m hack.bench "$@"
