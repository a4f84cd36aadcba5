"""epp-sidecar's flags: upstream's names, defaults and environment variables (llm-d routing sidecar,
`pkg/sidecar/proxy/options.go`), plus the few this implementation adds.

Precedence as upstream: a flag given on the command line, then `--configuration` / `--configuration-file`
(YAML with the flags' names as keys), then the environment, then the default.

Accepted for compatibility but not implemented (start fails with a message if asked for): KV connectors
other than nixlv2, the encoder stage (`--ec-connector`), `--enable-p2p-pull`, chunked decode
(`--decode-chunk-size` > 0). Accepted and without effect: `--tracing`, `--max-idle-conns-per-host`,
`--mooncake-bootstrap-port`, `--p2p-connector-port`, the zap encoder flags.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

import yaml

from ..flags import Flags, boolean, duration, port

KV_CONNECTORS_UPSTREAM = ("nixlv2", "shared-storage", "sglang", "mooncake", "offloading")
TLS_STAGES = ("prefiller", "decoder", "encoder")
POOL_GROUPS = ("inference.networking.k8s.io",)       # upstream also reads the older x-k8s.io v1alpha2 pools
DEFAULT_POOL_NAMESPACE = "default"


@dataclass
class Config:
    port: int = 8000
    model_server_port: int = 8200
    data_parallel_size: int = 1
    kv_connector: str = "nixlv2"
    enable_ssrf_protection: bool = False
    enable_prefiller_sampling: bool = False
    tls_stages: frozenset[str] = frozenset()           # --enable-tls
    insecure_stages: frozenset[str] = frozenset()      # --tls-insecure-skip-verify
    secure_proxy: bool = True
    cert_path: str | None = None
    pool_namespace: str = ""
    pool_name: str = ""
    pool_group: str = "inference.networking.k8s.io"
    endpoints_file: str | None = None
    endpoints_poll_interval: float = 1.0
    prefill_max_retries: int = 0
    prefill_retry_backoff: float = 0.2
    connect_timeout: float = 10.0
    prefill_timeout: float = 300.0                     # 0: none
    decode_timeout: float = 0.0                        # 0: none (a decode may stream for hours)
    metrics_port: int = 0
    bind_address: str = "0.0.0.0"
    model_server_host: str = "127.0.0.1"
    shutdown_grace_period: float = 30.0
    max_request_body_bytes: int = 128 << 20
    log_level: str = "info"
    extra: dict = field(default_factory=dict)


def _stages(text) -> list[str]:
    items = text if isinstance(text, list) else str(text).split(",")
    out = [s.strip() for s in items if str(s).strip()]
    for s in out:
        if s not in TLS_STAGES:
            raise argparse.ArgumentTypeError(f"stages must be one of: {', '.join(TLS_STAGES)} (got {s!r})")
    return out


def _nonneg_int(text) -> int:
    try:
        v = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _log_level(text) -> str:
    v = str(text).strip().lower()
    if v.isdigit():
        return "debug" if int(v) >= 4 else "info"
    if v in ("debug", "info", "warn", "warning", "error", "dpanic", "panic", "fatal"):
        return {"warn": "warning", "dpanic": "error", "panic": "error", "fatal": "error"}.get(v, v)
    raise argparse.ArgumentTypeError(f"invalid log level {text!r}")


class _Tagged(Flags):
    """Flags that also remember the YAML key they answer to, and the types to convert YAML values with."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser)
        self.types: dict[str, object] = {}

    def add(self, name: str, help: str, default=None, type=str, env: str | None = None, **kw) -> None:
        self.types[name] = type
        super().add(name, help, default, type, env, **kw)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="epp-sidecar",
        description="P/D routing sidecar in front of a decode pod's vLLM (llm-d routing sidecar flags).")
    f = _Tagged(ap)
    f.add("port", "the port the sidecar listens on (the pool's target port)", 8000, port)
    f.add("model-server-port", "the port the local model server (vLLM) listens on", None, port)
    f.add("vllm-port", "deprecated name of --model-server-port", 8200, port)
    f.add("data-parallel-size", "vLLM's data-parallel size: rank r listens on --port+r and goes to "
          "--model-server-port+r", 1, int)
    f.add("kv-connector", "the KV protocol between prefiller and decoder (implemented: nixlv2)", "nixlv2")
    f.add("connector", "removed upstream alias of --kv-connector", None)
    f.add("ec-connector", "encoder stage connector (E/PD); not implemented here", "")
    f.add("mooncake-bootstrap-port", "mooncake connector only; accepted, unused", 8998, port,
          env="MOONCAKE_BOOTSTRAP_PORT")
    f.add("p2p-connector-port", "offloading connector only; accepted, unused", 7777, port, env="P2P_CONNECTOR_PORT")
    f.add("enable-p2p-pull", "offloading P2P tier; not implemented here", False, boolean)
    f.add("enable-ssrf-protection", "only prefill targets that are pool members (InferencePool or "
          "--endpoints-file) are called; others get 403", False, boolean)
    f.add("enable-prefiller-sampling", "pick the prefill target at random among the header's list instead of "
          "the first", False, boolean, env="ENABLE_PREFILLER_SAMPLING")
    f.add("enable-tls", "stages reached over TLS: prefiller, decoder (encoder accepted, unused); repeatable or "
          "comma-separated", None, _stages, action="append")
    f.add("tls-insecure-skip-verify", "stages whose TLS certificate is not verified", None, _stages, action="append")
    f.add("secure-proxy", "serve TLS on --port (as upstream: on by default, a self-signed certificate without "
          "--cert-path; plain-HTTP deployments pass --secure-proxy=false)", True, boolean)
    f.add("cert-path", "directory with tls.crt and tls.key for --secure-proxy (else self-signed); reloaded on "
          "change", None)
    f.add("inference-pool", "InferencePool as namespace/name or name (namespace 'default')", "", env="INFERENCE_POOL")
    f.add("inference-pool-name", "deprecated (removed upstream): the InferencePool's name", "",
          env="INFERENCE_POOL_NAME")
    f.add("inference-pool-namespace", "deprecated (removed upstream): the InferencePool's namespace", "",
          env="INFERENCE_POOL_NAMESPACE")
    f.add("pool-group", "API group of the InferencePool", "inference.networking.k8s.io")
    f.add("max-idle-conns-per-host", "accepted for compatibility; connections are pooled without a cap", 1024, int)
    f.add("prefill-max-retries", "retries of a prefill leg that failed with 502/503/504 or a connection error",
          0, _nonneg_int)
    f.add("prefill-retry-backoff", "delay between prefill retries", duration("200ms"), duration)
    f.add("decode-chunk-size", "chunked decode; only 0 (off) is implemented", 0, _nonneg_int)
    f.add("configuration", "sidecar configuration as inline YAML, keys as the flags' names", None)
    f.add("configuration-file", "file with the sidecar configuration in YAML", None)
    f.add("tracing", "OpenTelemetry tracing; accepted, not implemented", False, boolean)
    f.add("metrics-port", "port of a Prometheus /metrics endpoint with the sidecar's counters; 0 disables it",
          0, port)
    # not upstream's
    f.add("endpoints-file", "SSRF allowlist from epp's YAML endpoints file (re-read when it changes), instead of or "
          "besides the InferencePool", None)
    f.add("bind-address", "address the sidecar binds", "0.0.0.0", env="EPP_SIDECAR_BIND_ADDRESS")
    f.add("model-server-host", "address of the local model server", "127.0.0.1")
    f.add("connect-timeout", "timeout of a TCP (and TLS) connect to the prefiller or the model server",
          duration("10s"), duration)
    f.add("prefill-timeout", "timeout of a whole prefill leg (then decode alone); 0 = none", duration("300s"),
          duration)
    f.add("decode-timeout", "timeout of a whole decode leg or proxied request; 0 = none", 0.0, duration)
    f.add("shutdown-grace-period", "on SIGTERM, how long in-flight requests may take to finish", duration("30s"),
          duration)
    f.add("max-request-body-bytes", "larger P/D request bodies are refused with 413", 128 << 20, int)
    f.add("zap-log-level", "log level: debug, info, error, or a verbosity number", "info", _log_level)
    f.add("zap-devel", "accepted for compatibility", False, boolean)
    f.add("zap-encoder", "accepted for compatibility", "json")
    f.add("zap-stacktrace-level", "accepted for compatibility", "error")
    f.add("zap-time-encoding", "accepted for compatibility", "epoch")
    ap.add_argument("-v", "--v", dest="v", type=int, default=0, help="log verbosity (>= 4 is debug)")
    ap.set_defaults(_types=f.types)
    return ap


def _explicit(argv: list[str], ap: argparse.ArgumentParser) -> set[str]:
    """dests of the flags given on the command line (they win over the YAML configuration)."""
    by_opt = {o: a.dest for a in ap._actions for o in a.option_strings}
    return {by_opt[t.split("=", 1)[0]] for t in argv if t.startswith("-") and t.split("=", 1)[0] in by_opt}


def _merge_yaml(args: argparse.Namespace, text: str, where: str, explicit: set[str],
                ap: argparse.ArgumentParser) -> None:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        ap.error(f"{where}: not valid YAML: {e}")
    if doc is None:
        return
    if not isinstance(doc, dict):
        ap.error(f"{where}: must be a mapping of flag names to values")
    types = args._types
    unknown = sorted(k for k in doc if k not in types or k in ("configuration", "configuration-file"))
    if unknown:
        ap.error(f"{where}: unknown key(s) {unknown}")
    for key, value in doc.items():
        dest = key.replace("-", "_")
        if dest in explicit:
            continue
        conv = types[key]
        try:
            if conv is _stages:
                value = [_stages(value)]
            elif not (conv is boolean and isinstance(value, bool)):
                value = conv(str(value))
        except (argparse.ArgumentTypeError, ValueError) as e:
            ap.error(f"{where}: {key}: {e}")
        setattr(args, dest, value)


def _flatten(lists) -> frozenset[str]:
    return frozenset(s for group in lists or () for s in group)


def parse(argv: list[str] | None = None) -> Config:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = build_parser()
    args = ap.parse_args(argv)
    explicit = _explicit(argv, ap)
    if args.configuration and args.configuration_file:
        ap.error("flags --configuration and --configuration-file are mutually exclusive")
    if args.configuration:
        _merge_yaml(args, args.configuration, "--configuration", explicit, ap)
    elif args.configuration_file:
        try:
            with open(args.configuration_file, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as e:
            ap.error(f"failed to read sidecar configuration from file: {e}")
        _merge_yaml(args, text, args.configuration_file, explicit, ap)

    kv = args.kv_connector
    if args.connector and "kv_connector" not in explicit:
        kv = args.connector
    if kv not in KV_CONNECTORS_UPSTREAM:
        ap.error(f"--kv-connector must be one of: {', '.join(KV_CONNECTORS_UPSTREAM)}")
    if kv != "nixlv2":
        ap.error(f"--kv-connector={kv} is not implemented by epp-sidecar (only nixlv2)")
    if args.ec_connector:
        ap.error("--ec-connector (the encoder stage) is not implemented by epp-sidecar")
    if args.enable_p2p_pull:
        ap.error("--enable-p2p-pull is not implemented by epp-sidecar")
    if args.decode_chunk_size:
        ap.error("--decode-chunk-size > 0 (chunked decode) is not implemented by epp-sidecar")
    if args.data_parallel_size < 1:
        ap.error(f"--data-parallel-size must be a positive integer, got {args.data_parallel_size}")

    # --model-server-port wins over the deprecated --vllm-port (flag, then YAML, then default)
    msport = args.model_server_port
    if msport is None or ("vllm_port" in explicit and "model_server_port" not in explicit):
        msport = args.vllm_port
    for name, base in (("--port", args.port), ("--model-server-port", msport)):
        if base < 1 or base + args.data_parallel_size - 1 > 65535:
            ap.error(f"{name} {base} with --data-parallel-size {args.data_parallel_size} is out of range")

    ns, name = "", ""
    if args.inference_pool:
        if args.inference_pool.count("/") > 1:
            ap.error("--inference-pool must be in format 'namespace/name' or 'name', not multiple slashes")
        ns, _, name = args.inference_pool.rpartition("/")
        if (not name) or (args.inference_pool.count("/") == 1 and not ns):
            ap.error("--inference-pool cannot have empty namespace or name")
        ns = ns or DEFAULT_POOL_NAMESPACE
    elif args.inference_pool_name:
        ns, name = args.inference_pool_namespace or DEFAULT_POOL_NAMESPACE, args.inference_pool_name
    if args.enable_ssrf_protection and not (name or args.endpoints_file):
        ap.error("--enable-ssrf-protection needs the pool: --inference-pool (or INFERENCE_POOL) or --endpoints-file")
    if name and args.enable_ssrf_protection and args.pool_group not in POOL_GROUPS:
        ap.error(f"unsupported --pool-group {args.pool_group!r}, must be one of {list(POOL_GROUPS)}")

    level = args.zap_log_level if "zap_log_level" in explicit or args.v == 0 else _log_level(str(args.v))
    return Config(
        port=args.port, model_server_port=msport, data_parallel_size=args.data_parallel_size, kv_connector=kv,
        enable_ssrf_protection=args.enable_ssrf_protection, enable_prefiller_sampling=args.enable_prefiller_sampling,
        tls_stages=_flatten(args.enable_tls), insecure_stages=_flatten(args.tls_insecure_skip_verify),
        secure_proxy=args.secure_proxy, cert_path=args.cert_path, pool_namespace=ns, pool_name=name,
        pool_group=args.pool_group, endpoints_file=args.endpoints_file,
        prefill_max_retries=args.prefill_max_retries, prefill_retry_backoff=args.prefill_retry_backoff,
        connect_timeout=args.connect_timeout, prefill_timeout=args.prefill_timeout,
        decode_timeout=args.decode_timeout, metrics_port=args.metrics_port, bind_address=args.bind_address,
        model_server_host=args.model_server_host, shutdown_grace_period=args.shutdown_grace_period,
        max_request_body_bytes=args.max_request_body_bytes, log_level=level,
        extra={"tracing": args.tracing, "max_idle_conns_per_host": args.max_idle_conns_per_host})


def env_summary() -> dict[str, str]:
    """The environment variables the sidecar reads, for the start-up log."""
    names = ("INFERENCE_POOL", "INFERENCE_POOL_NAME", "INFERENCE_POOL_NAMESPACE", "ENABLE_PREFILLER_SAMPLING",
             "EPP_SIDECAR_BIND_ADDRESS", "KUBECONFIG")
    return {n: os.environ[n] for n in names if os.environ.get(n)}
