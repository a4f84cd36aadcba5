#!/usr/bin/env bash
# One command for the local stack: Envoy on 127.0.0.1:8081 -> epp -> simulated vLLM pods, then a demo
# load that prints where each request went and why; the web view (epp --ui) at http://127.0.0.1:8082/ui
# follows the pool and every decision live. Ctrl-C stops everything.
#   hack/stack.sh [--config FILE] [--topology pd] [--demo-only] [-- EPP_FLAGS...]    (--help: every option)
# Runs in the caller's directory, so relative paths in --config and the epp flags are the caller's.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/hack/setup.sh"
export PATH="$root/.venv/bin:$PATH"
exec "$root/.venv/bin/python" "$root/hack/stack.py" "$@"
