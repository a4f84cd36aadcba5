"""`vllm-sim`: start one simulated vLLM server. Flag names follow `vllm serve` where vLLM has one."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from . import profiles
from .failures import FAILURES


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vllm-sim", description="Simulated vLLM OpenAI-compatible server")
    a = ap.add_argument
    a("--host", default="127.0.0.1")
    a("--port", type=int, default=8000)
    a("--model", default="sim-model", help="model (path in vLLM); the served name unless --served-model-name")
    a("--served-model-name", nargs="+", default=None)
    a("--tokenizer", default=None, help="directory with tokenizer.json (+ chat template); default: shipped BPE")
    a("--profile", default="llama-8b-h100", choices=sorted(profiles.PROFILES))
    for name in profiles.OVERRIDABLE:
        if name in ("max_model_len", "num_gpu_blocks"):   # vLLM's own flags below set these
            continue
        typ = int if name in ("kv_bytes_per_token", "num_gpu_blocks") else float
        a("--" + name.replace("_", "-"), type=typ, default=None, dest=name,
          help=f"override the profile's {name}")
    a("--max-model-len", type=int, default=None)
    a("--block-size", type=int, default=16)
    a("--num-gpu-blocks-override", type=int, default=None)
    a("--max-num-seqs", type=int, default=256)
    a("--max-num-batched-tokens", type=int, default=8192)
    a("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    a("--kv-offload-blocks", type=int, default=0, help="CPU tier capacity in blocks (0 = none)")
    a("--time-scale", type=float, default=1.0, help="engine seconds per wall second (10 = ten times faster)")
    a("--seed", type=int, default=0)
    a("--eos-prob", type=float, default=0.0,
      help="per-token chance of EOS when ignore_eos is false (0 = always run to max_tokens)")
    a("--default-max-tokens", type=int, default=256, help="output length when a request sets no max_tokens")
    a("--kv-events-config", default=None, help="vLLM's KVEventsConfig JSON")
    a("--data-parallel-rank", type=int, default=0)
    a("--kv-transfer-config", default=None, help="vLLM's KVTransferConfig JSON (NixlConnector)")
    a("--kv-transfer-timeout", type=float, default=480.0,
      help="engine seconds a prefill keeps blocks pinned for the decoder (VLLM_NIXL_ABORT_REQUEST_TIMEOUT)")
    a("--kv-transport", choices=("auto", "nixl", "http"), default="auto")
    a("--engine-id", default=None)
    a("--pd-sidecar", action="store_true",
      help="act as llm-d's routing sidecar too: run the prefill leg named by x-prefiller-host-port")
    a("--enable-lora", action="store_true")
    a("--max-loras", type=int, default=1)
    a("--max-lora-rank", type=int, default=16)
    a("--max-cpu-loras", type=int, default=None)
    a("--lora-modules", nargs="+", default=None, help="name=path or JSON {name, path, base_model_name}")
    a("--failure-rate", type=float, default=0.0, help="share of generation requests that fail (0..1)")
    a("--failure-types", nargs="+", default=None, choices=sorted(FAILURES))
    a("--metrics-delay-s", type=float, default=0.0, help="answer /metrics this late")
    a("--metrics-garbage", action="store_true", help="answer /metrics with unparsable text")
    a("--exit-after-s", type=float, default=0.0, help="exit abruptly after this many wall seconds")
    a("--exit-after-requests", type=int, default=0, help="exit abruptly on the Nth generation request")
    a("--log-level", default="WARNING")
    return ap


async def serve(args) -> None:
    from .server import SimServer
    srv = SimServer(args)
    await srv.start()
    print(f"vllm-sim listening on http://{args.host}:{args.port} model={srv.model_name} "
          f"profile={args.profile} blocks={srv.engine.cfg.num_gpu_blocks} "
          f"kv_transfer={srv.pd.counts['transport'] if srv.pd else 'off'}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await srv.stop()


def main(argv=None) -> None:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:   # vLLM flags the simulator does not model (e.g. --tensor-parallel-size 4): accept, say so
        print(f"vllm-sim: ignoring flags it does not model: {' '.join(unknown)}", file=sys.stderr)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        try:
            import uvloop      # noticeably cheaper per SSE chunk; the sim is often the load generator's peer
            uvloop.run(serve(args))
        except ImportError:
            asyncio.run(serve(args))
    except (ValueError, OSError) as exc:
        print(f"vllm-sim: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
