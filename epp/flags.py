"""Command-line flags with GIE's names, defaults and Go flag syntax (`--flag=false`, `-flag`, `50ms`)."""
from __future__ import annotations

import argparse
import os

from .durations import parse_duration


def duration(text: str) -> float:
    """Go duration syntax ("50ms", "1m30s"); a bare number is seconds. Returns seconds."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def boolean(text: str) -> bool:
    v = text.strip().lower()
    if v in ("1", "t", "true", "yes", "on"):
        return True
    if v in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (use true or false)")


def port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}")
    return int(text)


def objective(text: str) -> tuple[str, int]:
    name, sep, prio = text.partition("=")
    try:
        if sep and name:
            return name, int(prio)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"invalid objective {text!r} (use NAME=PRIORITY, e.g. batch=-1)")


class Flags:
    """Declares each flag as --name and -name (Go accepts both)."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.p = parser

    def add(self, name: str, help: str, default=None, type=str, env: str | None = None, **kw) -> None:
        if env and os.environ.get(env):
            default = type(os.environ[env]) if type is not str else os.environ[env]
        if type is boolean:
            kw.update(nargs="?", const=True)
        self.p.add_argument(f"--{name}", f"-{name}", default=default, type=type,
                            help=f"{help} (default {default!r}{f'; env {env}' if env else ''})", **kw)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="epp", description="Endpoint picker (Gateway API Inference Extension) over Envoy ext_proc.")
    f = Flags(ap)
    f.add("grpc-port", "ext_proc gRPC port", 9002, port)
    f.add("grpc-health-port", "gRPC health port", 9003, port)
    f.add("metrics-port", "Prometheus metrics port", 9090, port)
    f.add("bind-address", "address every server binds", "0.0.0.0", env="EPP_BIND_ADDRESS")
    f.add("endpoints-file", "YAML file listing the pool's endpoints (standalone discovery); re-read on change", None)
    f.add("pool-name", "InferencePool name (also the pool label of metrics)", "", env="POOL_NAME")
    f.add("pool-namespace", "InferencePool namespace", "default", env="NAMESPACE")
    f.add("pool-group", "InferencePool API group", "inference.networking.k8s.io")
    f.add("endpoint-selector", "standalone discovery without an InferencePool: a label selector for the model-server "
          "pods (e.g. app=vllm), with --endpoint-target-ports", "")
    f.add("endpoint-target-ports", "ports of each selected pod that are endpoints, comma-separated (standalone mode)", "",
          )
    f.add("ha-enable-leader-election", "run several replicas active-passive: only the holder of a Lease reports ready",
          False, boolean)
    f.add("leader-election-lease-duration", "HA: how long a lease holds without renewal", duration("15s"), duration)
    f.add("leader-election-renew-deadline", "HA: a leader that cannot renew for this long steps down", duration("10s"),
          duration)
    f.add("leader-election-retry-period", "HA: how often the lease is renewed or tried", duration("2s"), duration)
    f.add("kubeconfig", "kubeconfig file (default: in-cluster credentials, else $KUBECONFIG or ~/.kube/config)", None)
    f.add("refresh-metrics-interval", "how often each endpoint's /metrics is scraped", duration("50ms"), duration)
    f.add("metrics-staleness-threshold", "metrics older than this count as unknown", duration("2s"), duration)
    f.add("metrics-scrape-timeout", "timeout of one /metrics scrape", duration("1s"), duration)
    f.add("total-queued-requests-metric", "model-server metric for waiting requests", "vllm:num_requests_waiting")
    f.add("total-running-requests-metric", "model-server metric for running requests", "vllm:num_requests_running")
    f.add("kv-cache-usage-percentage-metric", "model-server metric for KV-cache usage (0..1)", "vllm:kv_cache_usage_perc")
    f.add("lora-info-metric", "model-server metric for LoRA adapters", "vllm:lora_requests_info")
    f.add("cache-info-metric", "model-server metric for KV-cache configuration", "vllm:cache_config_info")
    f.add("secure-serving", "serve ext_proc over TLS", True, boolean)
    f.add("cert-path", "directory with tls.crt and tls.key (else a self-signed certificate is made)", None)
    f.add("ext-proc-server", "ext_proc transport: native (lean HTTP/2, fastest) or grpcio", "native",
          choices=("native", "grpcio"))
    f.add("config-file", "EndpointPickerConfig YAML (plugins and scheduling profiles); default: upstream's default profile", None)
    f.add("config-text", "EndpointPickerConfig YAML given inline (instead of --config-file)", None)
    f.add("allow-experimental-plugins", "allow plugins of upstream's Alpha stability level in the config (else "
          "the EPP refuses to start)", False, boolean)
    f.add("emit-endpoint-scores", "give the proxy every scored candidate's score in the envoy.lb dynamic metadata "
          "(x-gateway-destination-endpoint-scores)", False, boolean)
    f.add("max-num-of-endpoints", "endpoints per decision: more than 1 adds fallbacks to the destination list", 1, int)
    f.add("objective", "an InferenceObjective priority for header x-gateway-inference-objective, NAME=PRIORITY "
          "(repeatable; priority < 0 is sheddable)", None, objective, action="append")
    f.add("decision-header", "add x-epp-decision (candidates' scores and the pick) to responses", False, boolean)
    f.add("max-request-body-bytes", "larger request bodies are refused with 413", 128 << 20, int)
    f.add("shutdown-grace-period", "on SIGTERM, how long in-flight streams may take to finish", duration("15s"), duration)
    ap.add_argument("-v", "--v", dest="v", type=int, default=0, help="log verbosity (>= 4 is debug)")
    return ap


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    sources = [n for n, v in (("--endpoints-file", args.endpoints_file), ("--pool-name", args.pool_name),
                                ("--endpoint-selector", args.endpoint_selector)) if v]
    if len(sources) != 1:
        ap.error("give exactly one source of endpoints: --pool-name (an InferencePool), --endpoint-selector with "
                 "--endpoint-target-ports (pods by label), or --endpoints-file (a YAML list)"
                 + (f"; got {' and '.join(sources)}" if sources else ""))
    ports = []
    for part in filter(None, (x.strip() for x in args.endpoint_target_ports.split(","))):
        if not part.isdigit() or not 0 < int(part) < 65536:
            ap.error(f"--endpoint-target-ports: {part!r} is not a port")
        ports.append(int(part))
    args.endpoint_target_ports = ports
    if args.endpoint_selector and not ports:
        ap.error("--endpoint-selector needs --endpoint-target-ports")
    if args.config_file and args.config_text:
        ap.error('both the "config-file" and "config-text" flags cannot be set at the same time')
    if args.max_num_of_endpoints < 1:
        ap.error("--max-num-of-endpoints must be >= 1")
    if args.refresh_metrics_interval <= 0:
        ap.error("--refresh-metrics-interval must be positive")
    return args
