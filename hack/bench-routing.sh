#!/usr/bin/env bash
# The routing scenarios of docs/benchmarks.md ("Routing scenarios"), every router of each, medians of
# 3 runs, then the P/D long-input variants (medians of 3): the published tables, rerun in one command.
#
#   hack/bench-routing.sh                       # everything (~6 h on 2 cores)
#   SCENARIOS="churn bursty" hack/bench-routing.sh --routers epp-latency,sglang-cache-aware
#   REPEAT=1 PD=0 hack/bench-routing.sh         # one run each, no P/D
#
# Extra arguments go to every `hack/bench.sh run`. Results: $OUT/<scenario>/report.md (default
# out/bench/routing-<time>/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/bench/routing-$(date +%Y%m%d-%H%M%S)}
REPEAT=${REPEAT:-3}
rc=0
for s in ${SCENARIOS:-heterogeneous bursty decode-heavy agentic two-replicas churn}; do
  hack/bench.sh run "$s" --repeat "$REPEAT" --out "$OUT/$s" "$@" || rc=1
done
if [ "${PD:-1}" != 0 ]; then
  .venv/bin/python -m hack.bench.pd hack/bench/scenarios/pd/long-input.yaml --repeat "$REPEAT" --out "$OUT/pd-long-input" || rc=1
fi
echo "results in $OUT"
exit $rc
