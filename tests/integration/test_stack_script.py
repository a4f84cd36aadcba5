"""The local stack's command line (hack/stack.py, what hack/stack.sh runs): --config and the epp flags
after `--` reach epp, so a config or a flag can be tried on the stack without editing a script."""
import os
import re
import subprocess
import sys

import pytest

from testbed.ports import free_port

pytestmark = pytest.mark.envoy
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROW = re.compile(r"^\s*\d+\s+(acme|globex|initech)\s+(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s", re.M)


def stack(tmp_path, *args: str) -> subprocess.CompletedProcess:
    # TMPDIR: the stack keeps its logs directory for the user to read; here it lands under tmp_path
    return subprocess.run([sys.executable, os.path.join(ROOT, "hack", "stack.py"), "--backend", "standin",
                           "--pods", "2", "--demo-only", "--port", str(free_port()), "--ui-port", str(free_port()),
                           *args],
                          cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True, text=True,
                          timeout=120)


def test_config_and_epp_flags_reach_epp(tmp_path):
    r = stack(tmp_path, "--config", "config/load-only.yaml", "--", "--objective", "batch=-1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "config config/load-only.yaml, flags --objective batch=-1" in r.stdout
    rows = ROW.findall(r.stdout)
    assert len(rows) == 12, r.stdout
    # load-only.yaml has no prefix scorer and weights 2+1+2+1: every pod's total is 6, its prefix score 0
    assert {(prefix, total) for _, _, prefix, _, _, total in rows} == {("0.00", "6.00")}, r.stdout


def test_a_flag_epp_rejects_stops_the_stack_with_epps_message(tmp_path):
    r = stack(tmp_path, "--", "--no-such-flag")
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "epp exited with 2" in r.stderr
    assert "unrecognized arguments: --no-such-flag" in r.stderr
