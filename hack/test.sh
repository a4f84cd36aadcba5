#!/usr/bin/env bash
# The test command: sets up .venv, runs the unit and integration suites (real Envoy, real sockets on
# 127.0.0.1) and the shared black-box protocol check. Exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh || exit 1
export PATH="$PWD/.venv/bin:$PATH"
# the manifest tests render with `kubectl kustomize`: here a missing kubectl fails them, it never skips them
export EPP_REQUIRE_KUBECTL=1
command -v kubectl >/dev/null \
  || echo "test: kubectl not on PATH: the manifest tests will fail (Debian/Ubuntu: apt-get install kubectl)" >&2
# Debian packages some tests drive, installed here once, only where missing (as root with apt-get, as on
# CI): headless Chromium for the web view's browser test, wrk for the pinned benchmark's quick run.
# Without them those tests fail, they never skip.
missing=()
command -v chromium >/dev/null 2>&1 || [ -n "${EPP_CHROMIUM:-}" ] || missing+=(chromium)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing ${missing[*]} (Debian packages) for the browser and pinned-benchmark tests" >&2
    apt_log=$(mktemp)
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           "${missing[@]}"; } >"$apt_log" 2>&1; then
      tail -5 "$apt_log" >&2
      echo "test: installing ${missing[*]} failed: the tests that need them will fail" >&2
    fi
    rm -f "$apt_log"
  else
    echo "test: ${missing[*]} not on PATH: the tests that need them will fail (Debian/Ubuntu: apt-get install ${missing[*]})" >&2
  fi
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

.venv/bin/python -m pytest -q -p no:cacheprovider --junitxml="$out/junit.xml" "$@"
pytest_rc=$?

acceptance=../shared/acceptance/epp_protocol_check.py
accept_rc=0
if [ -f "$acceptance" ]; then
  echo "--- shared acceptance check: $acceptance"
  # the check starts `epp` itself; make every server it starts bind to loopback only
  EPP_BIND_ADDRESS=127.0.0.1 .venv/bin/python "$acceptance" --epp-cmd "$PWD/.venv/bin/epp" | tee "$out/accept.txt"
  accept_rc=${PIPESTATUS[0]}
else
  echo "--- shared acceptance check not found at $acceptance: skipped" >&2
fi

.venv/bin/python - "$out/junit.xml" "$out/accept.txt" <<'PY'
import re, sys, xml.etree.ElementTree as ET
passed = failed = skipped = 0
try:
    for s in ET.parse(sys.argv[1]).getroot().iter("testsuite"):
        t, f, e, sk = (int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        passed += t - f - e - sk; failed += f + e; skipped += sk
except (OSError, ET.ParseError):
    failed += 1
try:
    m = re.search(r"^(\d+) passed, (\d+) failed$", open(sys.argv[2]).read(), re.M)
    if m:
        passed += int(m.group(1)); failed += int(m.group(2))
except OSError:
    pass
print(f"total: {passed} passed, {failed} failed, {skipped} skipped")
PY
[ $pytest_rc -eq 0 ] && [ $accept_rc -eq 0 ]
