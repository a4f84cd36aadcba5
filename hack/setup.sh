#!/usr/bin/env bash
# Creates .venv and installs the project with its test and benchmark tools (extras test, bench); quick when
# nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: Python >= 3.11 is needed (found: $("$PY" --version 2>&1)); set PYTHON=" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.epp-installed
# the C sources count too: the install compiles them in place (epp/kvcache/_prefix.c)
want=$(cat pyproject.toml hack/setup.sh epp/kvcache/*.c | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! ls epp/kvcache/_prefix.*.so >/dev/null 2>&1; then
  echo "setup: installing epp and its test and benchmark tools into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
  log=$(mktemp)
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,bench]' >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
  # xds-protos ships its own, older copy of opentelemetry-proto's modules (opentelemetry/proto/...): the
  # wheel pip unpacks last wins, and xds-protos' copy lacks what the OTLP exporter imports. Put
  # opentelemetry-proto's own files back, whatever the order was.
  otel_proto=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')
  .venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
    "opentelemetry-proto==$otel_proto" >/dev/null 2>&1 \
    || echo "setup: reinstalling opentelemetry-proto failed: the OTLP exporter may not import" >&2
  # optional: real NIXL (CPU, UCX over TCP) for the P/D KV transfer; the fallback transport covers its absence
  .venv/bin/python -m pip install -q --disable-pip-version-check numpy >/dev/null 2>&1 \
    && .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps nixl==1.5.1 nixl-cu13==1.5.1 >/dev/null 2>&1 \
    || echo "setup: nixl not installed (optional)" >&2
  echo "$want" > "$stamp"
fi
