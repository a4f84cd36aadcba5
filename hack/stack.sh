#!/usr/bin/env bash
# One command for the local stack: Envoy on 127.0.0.1:8081 -> epp -> simulated vLLM pods, then a demo
# load that prints where each request went and why. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python hack/stack.py "$@"
