"""Prefill/decode pods on loopback: prefill sims, decode sims each behind a routing sidecar (epp-sidecar),
for epp with config/pd.yaml. The local stack's `--topology pd` (hack/stack.py), the P/D benchmark's pool
(hack/bench/pd_pool.py) and the P/D integration tests start them here.

    Envoy -> epp (decode profile picks a decode pod; the decider may add x-prefiller-host-port)
          -> decode pod = epp-sidecar :S -> vllm-sim :V   (prefill leg to the prefill pod first)
          -> prefill pod = vllm-sim :P                    (KV pulled by the decode sim over NIXL or HTTP)
"""
from __future__ import annotations

import json
import os
import shutil
import sys

from .children import Children
from .endpoints import write_endpoints
from .ports import free_port, free_range
from .wait import wait_port

PY = sys.executable
KV_TRANSFER = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"})
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPP_CONFIG = os.path.join(ROOT, "config", "pd.yaml")
FLEX_CONFIG = os.path.join(ROOT, "config", "pd-flex.yaml")


def find_sidecar() -> str | None:
    """The installed epp-sidecar (beside this Python, else on PATH); None when it is not installed."""
    return shutil.which("epp-sidecar", path=os.path.dirname(PY)) or shutil.which("epp-sidecar")


def start_sidecar(kids: Children, name: str, sidecar: str, port: int, vllm_port: int, endpoints_file: str):
    """The routing sidecar on port in front of the decode sim on vllm_port, its SSRF allowlist the
    endpoints file; returns once it listens."""
    proc = kids.start(name, [sidecar, "--bind-address", "127.0.0.1", "--port", str(port),
                             "--vllm-port", str(vllm_port), "--kv-connector", "nixlv2",
                             "--enable-ssrf-protection", "--secure-proxy=false", "--endpoints-file", endpoints_file])
    wait_port(port, 30, proc, name)
    return proc


def start(kids: Children, prefill: int, decode: int, endpoints_file: str, sim_args: list[str], flex: int = 0) -> dict:
    """Starts the pods and sidecars; writes the EPP's endpoints file. Returns the pool's addresses
    (a decode pod's is its sidecar's) and, under "sims", the simulators' own. flex: pods labeled
    prefill-decode (config/pd-flex.yaml), each behind a sidecar like a decode pod, since they decode too."""
    sidecar = find_sidecar()
    flags = ["--kv-transfer-config", KV_TRANSFER, *sim_args]
    p_base, d_base = free_range(prefill), free_range(decode + flex)
    pools = kids.start("prefill pods", [PY, "-m", "vllm_sim.pool", "--count", str(prefill), "--base-port", str(p_base),
                                        "--roles", "prefill", "--name-prefix", "prefill", "--", *flags]) if prefill else None
    # without the product sidecar installed, the decode sims run the sim's own built-in one
    dflags = flags if sidecar else [*flags, "--pd-sidecar"]
    # flex pods first in the decode range: d_base .. d_base + flex - 1
    roles = ",".join(["prefill-decode"] * flex + ["decode"] * decode)
    poold = kids.start("decode pods", [PY, "-m", "vllm_sim.pool", "--count", str(decode + flex), "--base-port",
                                       str(d_base), "--roles", roles, "--name-prefix", "decode", "--", *dflags])
    prefills = [f"127.0.0.1:{p_base + i}" for i in range(prefill)]
    for i in range(prefill):
        wait_port(p_base + i, 60, pools, "the prefill pods")
    for i in range(decode + flex):
        wait_port(d_base + i, 60, poold, "the decode pods")
    # the endpoints file is written before the sidecars start: each loads its SSRF allowlist at start,
    # so the first prefill target epp names is already allowed
    fronts = [free_port() if sidecar else d_base + i for i in range(decode + flex)]
    sims = [f"127.0.0.1:{d_base + i}" for i in range(decode + flex)]
    fronted = [f"127.0.0.1:{port}" for port in fronts]
    flexes, decodes = fronted[:flex], fronted[flex:]
    write_endpoints(endpoints_file, [(f"prefill-{i}", a, {"app": "sim", "llm-d.ai/role": "prefill"})
                                     for i, a in enumerate(prefills)]
                    + [(f"flex-{i}", a, {"app": "sim", "llm-d.ai/role": "prefill-decode"}) for i, a in enumerate(flexes)]
                    + [(f"decode-{i}", a, {"app": "sim", "llm-d.ai/role": "decode"}) for i, a in enumerate(decodes)])
    if sidecar:
        for i, front in enumerate(fronts):
            start_sidecar(kids, f"sidecar-{i}", sidecar, front, d_base + i, endpoints_file)
    return {"prefill": prefills, "decode": decodes, "flex": flexes,
            "sims": {"prefill": prefills, "decode": sims[flex:], "flex": sims[:flex]},
            "sidecar": "epp-sidecar" if sidecar else "built into the decode sims"}
