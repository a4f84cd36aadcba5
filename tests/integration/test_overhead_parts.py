"""The overhead benchmarks' parts on real sockets, without running a benchmark: instant stand-in pods in
their own process (testbed.instant_pods) answer the open-loop generator's raw keep-alive HTTP/1.1
requests (hack.bench.openloop over testbed.http1), and `hack/bench.sh epp-overhead` loads its modules."""
import json
import os
import subprocess
import sys

from hack.bench.openloop import Payload, Procs, run_load
from testbed.children import Children
from testbed.http1 import Target
from testbed.instant_pods import pod_stats, start_pods
from testbed.wait import until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def test_instant_pods_answer_every_open_loop_request(tmp_path):
    kids = Children(str(tmp_path))
    try:
        proc, ports = start_pods(kids, 2, metrics_kb=1)
        assert len(ports) == 2
        procs = Procs()
        procs.pids = {"pods": proc.pid}
        target = Target("pod", ports[0])
        r = await run_load(target, Payload(2048), 400.0, 40, 1, "even", procs, timeout=20)
        assert (r["ok"], r["errors"]) == (40, 0), r["codes"]
        assert r["p50_ms"] > 0 and "pods" in r["cpu_s"]
        assert target.opened <= 12                  # keep-alive: the prewarmed connections carried the load
        for c in target.idle:
            c.close()
        stats = await until(lambda: pod_stats(kids), "the pods' counters", test=lambda s: "page_bytes" in s)
        assert stats["page_bytes"] > 1024           # the vLLM-sized histogram lines are on the page
    finally:
        kids.stop_all()


def test_epp_overhead_subcommand_loads():
    r = subprocess.run([sys.executable, "-m", "hack.bench", "epp-overhead", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--sizes" in r.stdout and "--py-spy" in r.stdout
    p = Payload(4096)
    a, b = (json.loads(b"".join(p.parts()[1:]))["prompt"] for _ in range(2))
    assert a != b and a[13:] == b[13:]               # the same prompt after a unique request number
