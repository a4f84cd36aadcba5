"""The local stack's P/D topology: prefill sims, decode sims each behind a routing sidecar, epp with
config/pd.yaml. Used by stack.py (`--topology pd`).

    Envoy -> epp (decode profile picks a decode pod; the decider may add x-prefiller-host-port)
          -> decode pod = epp-sidecar :S -> vllm-sim :V   (prefill leg to the prefill pod first)
          -> prefill pod = vllm-sim :P                    (KV pulled by the decode sim over NIXL or HTTP)
"""
from __future__ import annotations

import json
import os
import shutil
import sys

from netutil import free_port, free_range, wait_port

PY = sys.executable
KV_TRANSFER = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"})
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sidecar_command() -> str | None:
    return shutil.which("epp-sidecar") or shutil.which("epp-sidecar", path=os.path.dirname(PY))


def start(kids, prefill: int, decode: int, endpoints_file: str, sim_args: list[str]) -> dict:
    """Starts the pods and sidecars; writes the EPP's endpoints file. Returns the pool's addresses
    (a decode pod's is its sidecar's) and, under "sims", the simulators' own."""
    sidecar = sidecar_command()
    flags = ["--kv-transfer-config", KV_TRANSFER, *sim_args]
    p_base, d_base = free_range(prefill), free_range(decode)
    pools = kids.start("prefill pods", [PY, "-m", "vllm_sim.pool", "--count", str(prefill), "--base-port", str(p_base),
                                        "--roles", "prefill", "--name-prefix", "prefill", "--", *flags])
    # without the product sidecar installed, the decode sims run the sim's own built-in one
    dflags = flags if sidecar else [*flags, "--pd-sidecar"]
    poold = kids.start("decode pods", [PY, "-m", "vllm_sim.pool", "--count", str(decode), "--base-port", str(d_base),
                                       "--roles", "decode", "--name-prefix", "decode", "--", *dflags])
    prefills = [f"127.0.0.1:{p_base + i}" for i in range(prefill)]
    for i in range(prefill):
        wait_port(p_base + i, 60, pools, "the prefill pods")
    for i in range(decode):
        wait_port(d_base + i, 60, poold, "the decode pods")
    # the endpoints file is written before the sidecars start: each loads its SSRF allowlist at start,
    # so the first prefill target epp names is already allowed
    fronts = [free_port() if sidecar else d_base + i for i in range(decode)]
    decode_sims = [f"127.0.0.1:{d_base + i}" for i in range(decode)]
    decodes = [f"127.0.0.1:{port}" for port in fronts]
    lines = ["endpoints:"]
    for i, a in enumerate(prefills):
        lines += [f"- name: prefill-{i}", f'  address: "{a}"', "  labels: {app: sim, llm-d.ai/role: prefill}"]
    for i, a in enumerate(decodes):
        lines += [f"- name: decode-{i}", f'  address: "{a}"', "  labels: {app: sim, llm-d.ai/role: decode}"]
    tmp = endpoints_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, endpoints_file)
    if sidecar:
        for i, front in enumerate(fronts):
            proc = kids.start(f"sidecar-{i}", [sidecar, "--bind-address", "127.0.0.1", "--port", str(front),
                                               "--vllm-port", str(d_base + i), "--kv-connector", "nixlv2",
                                               "--enable-ssrf-protection", "--secure-proxy=false",
                                               "--endpoints-file", endpoints_file])
            wait_port(front, 30, proc, f"sidecar {i}")
    return {"prefill": prefills, "decode": decodes, "sims": {"prefill": prefills, "decode": decode_sims},
            "sidecar": "epp-sidecar" if sidecar else "built into the decode sims"}


def epp_config() -> str:
    return os.path.join(ROOT, "config", "pd.yaml")


def demo(post, port: int, model: str, pods: dict) -> None:
    """Short questions stay on a decode pod; long documents get a prefill pod first; a repeated long
    document is already cached on its decode pod and needs no prefill hop."""
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    doc = lambda k: f"Document {k}. " + " ".join(words[(k * 3 + j) % 10] for j in range(900))  # noqa: E731
    cases = [("short", "What is the capital of France?"), ("long doc 1", doc(1)), ("long doc 2", doc(2)),
             ("doc 1 again", doc(1)), ("short", "And of Spain?")]
    print(f"\n{'request':12} {'decode pod':17} {'prefill pod':17} {'tokens':>6} {'cached':>6} {'ms':>7}  decision")
    for label, prompt in cases:
        status, body, headers, ms = post(port, {"model": model, "prompt": prompt, "max_tokens": 16})
        why = json.loads(headers.get("x-epp-decision", "{}") or "{}")
        profiles = why.get("profiles") or {}
        decode_pick = ((profiles.get("decode") or {}).get("pick") or why.get("pick") or ["?"])[0]
        prefill_pick = ((profiles.get("prefill") or {}).get("pick") or ["-"])[0]
        usage = body.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", "-")
        reasons = why.get("reasons") or {}
        if status != 200:
            print(f"{label:12} status {status}: {body}")
            continue
        print(f"{label:12} {decode_pick:17} {prefill_pick:17} {usage.get('prompt_tokens', '-'):>6} {cached:>6} "
              f"{ms:7.1f}  {json.dumps(reasons) if reasons else ''}")
    print(f"\nprefill pods {', '.join(pods['prefill'])}; decode pods {', '.join(pods['decode'])} "
          f"(sidecar: {pods['sidecar']}). A long uncached prompt is prefilled on a prefill pod and its KV "
          f"pulled by the decode pod; `cached` is what the prefill leg found cached, as llm-d's sidecar reports "
          f"it. epp counts tokens as ~4 bytes each unless a token-producer has the model's tokenizer.")
