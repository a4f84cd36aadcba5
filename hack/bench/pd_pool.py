"""A P/D pool for the benchmark: the scenario's sims with vLLM's NixlConnector, every decode sim behind
its own epp-sidecar (the product's routing sidecar), and the EPP's endpoints file naming prefill sims
by their own address and decode pods by their sidecar's. Chosen by pool.start when the scenario's
roles include a prefill role (prefill, prefill-decode)."""
from __future__ import annotations

import os
import sys

from epp.scheduling.plugins._roles import DECODE_ROLES
from testbed.children import Children
from testbed.endpoints import write_endpoints
from testbed.pd import KV_TRANSFER, find_sidecar, start_sidecar
from testbed.ports import free_listen_port, free_port, free_range
from testbed.wait import wait_file

PY = sys.executable


def start(kids: Children, spec, name: str, timeout: float, handle_cls, sim_flags) -> object:
    roles = [r.strip() for r in spec.roles.split(",")]
    base, kv_port = free_range(spec.count), free_listen_port()
    raw = os.path.join(kids.logdir, f"{name}-sims.yaml")
    efile = os.path.join(kids.logdir, f"{name}-endpoints.yaml")
    for f in (raw, efile):
        if os.path.exists(f):
            os.remove(f)
    p = kids.start(f"{name}-pool", [PY, "-m", "vllm_sim.pool", "--count", str(spec.count), "--base-port", str(base),
                                    "--roles", spec.roles, "--endpoints-file", raw, "--startup-timeout", str(timeout),
                                    "--", *sim_flags(spec, kv_port), "--kv-transfer-config", KV_TRANSFER])
    wait_file(raw, timeout + 5, p, f"the sim pool (log: {kids.log(name + '-pool')})", every=0.1)
    sidecar = find_sidecar()
    if not sidecar:
        raise RuntimeError("epp-sidecar not installed (pip install -e .)")
    # the endpoints file is written before the sidecars start: each loads its SSRF allowlist at start,
    # so the first prefill target epp names is already allowed
    # every pod that decodes (decode, and flex pods: prefill-decode) sits behind its sidecar; a flex pod
    # is also named by its sidecar's address when another pod's sidecar sends it a prefill leg
    fronts = {i: free_port() for i in range(spec.count) if roles[i % len(roles)] in DECODE_ROLES}
    write_endpoints(efile, [(f"{name}-{roles[i % len(roles)]}-{i}",
                             f"127.0.0.1:{fronts[i] if i in fronts else base + i}",
                             {"app": "sim", "llm-d.ai/role": roles[i % len(roles)]}) for i in range(spec.count)])
    for i, front in fronts.items():
        start_sidecar(kids, f"{name}-sidecar-{i}", sidecar, front, base + i, efile)
    # the sidecars are children of the run: stopped with the others
    return handle_cls(spec, p, [f"127.0.0.1:{base + i}" for i in range(spec.count)], efile, kv_port)

