"""Start a pool of simulated vLLM servers on consecutive loopback ports.

    python -m vllm_sim.pool --count 4 --base-port 8200 --roles prefill,decode,decode,decode \\
        --endpoints-file out/endpoints.yaml -- --time-scale 1 --profile llama-8b-h100

Prints one `name address role` line per sim once all answer /health, writes the EPP's endpoints file
(`endpoints: [{name, address, labels: {app: sim, llm-d.ai/role: ...}}]`), and on SIGINT/SIGTERM stops
every child before exiting. Children also die with the launcher (PR_SET_PDEATHSIG on Linux), so a
killed launcher leaves no orphans. Unknown flags go to every sim; `{port}`, `{port+N}` and `{index}` in
them are substituted per sim (e.g. a per-pod KV-events endpoint and topic).

`--profiles a,b` gives the sims latency profiles in turn, as `--roles` does roles (a pool of unlike
GPUs). `--respawn` starts a sim that exits again on its port, with the same flags (a pod restart: its
caches come back empty), after `--respawn-delay` seconds.
"""
from __future__ import annotations

import argparse
import ctypes
import http.client
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

ROLES = ("prefill", "decode", "prefill-decode", "both", "")


def _pdeathsig() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def substitute(arg: str, port: int, index: int) -> str:
    """`{port}`, `{port+N}` and `{index}` in a sim flag become this sim's values, e.g. a per-pod KV-events
    endpoint "tcp://*:{port+1000}" and topic "kv@127.0.0.1:{port}@sim-model"."""
    arg = re.sub(r"\{port([+-]\d+)?\}", lambda m: str(port + int(m.group(1) or 0)), arg)
    return arg.replace("{index}", str(index))


def write_endpoints(path: str, sims: list[dict]) -> None:
    lines = ["endpoints:"]
    for s in sims:
        lines.append(f"  - name: {s['name']}")
        lines.append(f"    address: \"{s['address']}\"")
        lines.append("    labels:")
        lines.append("      app: sim")
        if s["role"]:
            lines.append(f"      llm-d.ai/role: {s['role']}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as r:
            return r.status == 200
    except (OSError, http.client.HTTPException):   # not up yet, or something else holds the port
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="vllm_sim.pool", description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--base-port", type=int, default=8200)
    ap.add_argument("--roles", default="decode", help="comma list, cycled over the sims (e.g. prefill,decode)")
    ap.add_argument("--endpoints-file", default=None)
    ap.add_argument("--name-prefix", default="sim")
    ap.add_argument("--startup-timeout", type=float, default=30.0)
    ap.add_argument("--profiles", default="", help="comma list of latency profiles, cycled over the sims")
    ap.add_argument("--respawn", action="store_true", help="restart a sim that exits, on the same port")
    ap.add_argument("--respawn-delay", type=float, default=0.0)
    args, sim_args = ap.parse_known_args(argv)
    sim_args = [a for a in sim_args if a != "--"]
    roles = [r.strip() for r in args.roles.split(",")]
    bad = [r for r in roles if r not in ROLES]
    if bad:
        ap.error(f"unknown roles {bad}; use prefill, decode, prefill-decode")

    profiles = [x.strip() for x in args.profiles.split(",") if x.strip()]
    sims, procs = [], []
    cmds: dict[int, list[str]] = {}      # id(proc) -> its command, for --respawn
    stopping = False

    def stop(*_):
        nonlocal stopping
        if stopping:
            return
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 5
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    signal.signal(signal.SIGTERM, lambda *_: (stop(), sys.exit(0)))
    try:
        for i in range(args.count):
            port = args.base_port + i
            role = roles[i % len(roles)]
            extra = [substitute(a, port, i) for a in sim_args]
            if profiles:      # after the shared flags: the last --profile wins
                extra += ["--profile", profiles[i % len(profiles)]]
            cmd = [sys.executable, "-m", "vllm_sim", "--host", "127.0.0.1", "--port", str(port), *extra]
            procs.append(subprocess.Popen(cmd, preexec_fn=_pdeathsig))
            cmds[id(procs[-1])] = cmd
            sims.append({"name": f"{args.name_prefix}-{i}", "address": f"127.0.0.1:{port}", "role": role,
                         "port": port})
        deadline = time.monotonic() + args.startup_timeout
        pending = {s["port"] for s in sims}
        while pending:
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a sim exited during start-up (code {p.returncode})")
            pending = {port for port in pending if not _healthy(port)}
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"sims on ports {sorted(pending)} not healthy after {args.startup_timeout}s")
            if pending:
                time.sleep(0.1)
        if args.endpoints_file:
            write_endpoints(args.endpoints_file, sims)
        for s in sims:
            print(f"{s['name']} {s['address']} {s['role'] or '-'}", flush=True)
        print("pool ready", flush=True)
        while True:
            for p in procs:
                if p.poll() is not None:
                    cmd = cmds.pop(id(p), None)
                    procs.remove(p)
                    if args.respawn and cmd and not stopping:
                        print(f"a sim exited (code {p.returncode}); restarting it", file=sys.stderr, flush=True)
                        time.sleep(args.respawn_delay)
                        procs.append(subprocess.Popen(cmd, preexec_fn=_pdeathsig))
                        cmds[id(procs[-1])] = cmd
                    else:
                        print(f"a sim exited (code {p.returncode}); pool keeps the others", file=sys.stderr, flush=True)
                    break
            time.sleep(0.1 if args.respawn else 0.5)
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(f"vllm_sim.pool: {exc}", file=sys.stderr)
        return 1
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
