"""A P/D pool for the benchmark: the scenario's sims with vLLM's NixlConnector, every decode sim behind
its own epp-sidecar (the product's routing sidecar), and the EPP's endpoints file naming prefill sims
by their own address and decode pods by their sidecar's. Chosen by pool.start when the scenario's
roles include prefill."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time

from netutil import Children, free_listen_port, free_port, free_range, wait_port

PY = sys.executable
KV_TRANSFER = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"})


def sidecar_binary() -> str:
    path = shutil.which("epp-sidecar", path=os.path.dirname(PY)) or shutil.which("epp-sidecar")
    if not path:
        raise RuntimeError("epp-sidecar not installed (pip install -e .)")
    return path


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
    deadline = time.time() + timeout + 5
    while not os.path.exists(raw):
        if p.poll() is not None:
            raise RuntimeError(f"the sim pool exited with {p.returncode} (log: {kids.logdir}/{name}-pool.log)")
        if time.time() > deadline:
            raise TimeoutError(f"the sim pool did not start in {timeout:.0f}s")
        time.sleep(0.1)
    sidecar = sidecar_binary()
    # the endpoints file is written before the sidecars start: each loads its SSRF allowlist at start,
    # so the first prefill target epp names is already allowed
    fronts = {i: free_port() for i in range(spec.count) if roles[i % len(roles)] == "decode"}
    lines = ["endpoints:"]
    for i in range(spec.count):
        role = roles[i % len(roles)]
        address = f"127.0.0.1:{fronts[i] if i in fronts else base + i}"
        lines += [f"- name: {name}-{role}-{i}", f'  address: "{address}"',
                  f"  labels: {{app: sim, llm-d.ai/role: {role}}}"]
    with open(efile + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(efile + ".tmp", efile)
    for i, front in fronts.items():
        sc = kids.start(f"{name}-sidecar-{i}", [sidecar, "--bind-address", "127.0.0.1", "--port", str(front),
                                                "--vllm-port", str(base + i), "--kv-connector", "nixlv2",
                                                "--enable-ssrf-protection", "--secure-proxy=false",
                                                "--endpoints-file", efile])
        wait_port(front, 30, sc, f"sidecar {i}")
    # the sidecars are children of the run: stopped with the others
    return handle_cls(spec, p, [f"127.0.0.1:{base + i}" for i in range(spec.count)], efile, kv_port)

