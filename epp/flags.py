"""Command-line flags: every flag of llm-d router v0.10's EPP and GIE v1.5's EPP, parsed as they parse
them (spf13/pflag), plus this EPP's own.

pflag rules kept here (an argument list upstream accepts means the same thing here):
- a bool flag takes its value only as `--flag=value`; `--flag false` is `--flag` (true) and a stray word
- a value flag takes the next argument whatever it looks like (`--pool-name --x` names the pool "--x")
- words that are not flags are ignored (upstream's runner never reads them); `--` ends the flags
- `-v` is the only shorthand: `-v 4`, `-v=4`, `-v4`
- an unknown flag or a bad value: usage and exit 2; a validation error (Complete/Validate): exit 1
Ours on top: `-name` works like `--name` (upstream rejects it; accepting more changes no meaning).
"""
from __future__ import annotations

import argparse
import os
import re
import sys

from .durations import parse_duration

DEFAULT_DRAIN_TIMEOUT = 30.0


class FlagError(ValueError):
    """A validation error (upstream's Complete/Validate): the process exits 1 with this message."""


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


def integer(text: str) -> int:
    try:
        return int(text, 0) if text.strip().lower().startswith(("0x", "0o", "0b")) else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None


def objective(text: str) -> tuple[str, int]:
    name, sep, prio = text.partition("=")
    try:
        if sep and name:
            return name, int(prio)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"invalid objective {text!r} (use NAME=PRIORITY, e.g. batch=-1)")


def _choice(*values: str):
    def parse(text: str) -> str:
        if text.lower() not in values:
            raise argparse.ArgumentTypeError(f"invalid value {text!r} (one of: {', '.join(values)})")
        return text.lower()
    return parse


def zap_level(text: str) -> int:
    """controller-runtime's --zap-log-level: debug, info, error, panic or an integer N > 0 (V(N)).
    Returns the zap level (negative = more verbose)."""
    named = {"debug": -1, "info": 0, "error": 2, "panic": 4}
    if text.lower() in named:
        return named[text.lower()]
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f'invalid log level "{text}"')
    return -n


class Flags:
    """Declares each flag as --name and -name (Go's flag package accepts both); used by epp-sidecar."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.p = parser

    def add(self, name: str, help: str, default=None, type=str, env: str | None = None, **kw) -> None:
        if env and os.environ.get(env):
            default = type(os.environ[env]) if type is not str else os.environ[env]
        if type is boolean:
            kw.update(nargs="?", const=True)
        self.p.add_argument(f"--{name}", f"-{name}", default=default, type=type,
                            help=f"{help} (default {default!r}{f'; env {env}' if env else ''})", **kw)


class PFlags:
    """Declares pflag-style flags: `--name` only; `normalize` rewrites an argument list the way pflag
    reads it into `--name=value` words that argparse then converts and checks."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.p = parser
        self.bools: set[str] = set()
        self.valued: set[str] = set()
        self.deprecated: dict[str, str] = {}       # name -> pflag's deprecation message
        self.not_applicable: dict[str, str] = {}   # name -> why it has no effect here (warned when set)

    def add(self, name: str, help: str, default=None, type=str, env: str | None = None,
            deprecated: str | None = None, not_applicable: str | None = None, **kw) -> None:
        if env and os.environ.get(env):
            default = type(os.environ[env]) if type is not str else os.environ[env]
        if type is boolean:
            kw.update(nargs="?", const=True)
            self.bools.add(name)
        else:
            self.valued.add(name)
        if deprecated:
            self.deprecated[name] = deprecated
        if not_applicable:
            self.not_applicable[name] = not_applicable
        shown = "" if default is None else f" (default {default!r})"
        self.p.add_argument(f"--{name}", dest=kw.pop("dest", name.replace("-", "_")), default=default, type=type,
                            help=f"{help}{shown}{f'; env {env}' if env else ''}", **kw)

    def normalize(self, argv: list[str]) -> tuple[list[str], list[str], list[str]]:
        """(words for argparse, flag names given, ignored positional words)."""
        out: list[str] = []
        given: list[str] = []
        stray: list[str] = []
        known = self.bools | self.valued
        i = 0
        while i < len(argv):
            a = argv[i]
            i += 1
            if a == "--":
                stray.extend(argv[i:])
                break
            if a in ("-h", "--help"):
                out.append(a)
                continue
            long = a[2:] if a.startswith("--") else a[1:] if a.startswith("-") and a[1:].split("=", 1)[0] in known else None
            if long is not None and long:
                name, eq, value = long.partition("=")
                if name in self.bools:
                    out.append(f"--{name}={value if eq else 'true'}")
                elif name in self.valued:
                    if eq:
                        out.append(f"--{name}={value}")
                    elif i < len(argv):
                        out.append(f"--{name}={argv[i]}")
                        i += 1
                    else:
                        out.append(f"--{name}")  # argparse: "expected one argument", exit 2 (pflag too)
                        continue
                else:
                    out.append(a)                # unknown flag: argparse fails with usage, exit 2
                    continue
                given.append(name)
            elif a.startswith("-") and len(a) > 1:
                # pflag shorthand: `-v` is the only one
                if a[1] == "v":
                    value = a[2:]
                    if value.startswith("="):
                        value = value[1:]
                    elif not value:
                        if i >= len(argv):
                            out.append("--v")
                            continue
                        value = argv[i]
                        i += 1
                    out.append(f"--v={value}")
                    given.append("v")
                else:
                    out.append(a)
            else:
                stray.append(a)
        return out, given, stray


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="epp", allow_abbrev=False,
                                 description="Endpoint picker (Gateway API Inference Extension) over Envoy ext_proc.")
    ap.set_defaults(_pflags=None)
    f = PFlags(ap)
    ap.pflags = f  # type: ignore[attr-defined]
    # ---- ext_proc, health, metrics ports and serving (upstream)
    f.add("grpc-port", "gRPC port used for communicating with Envoy proxy (ext_proc)", 9002, port)
    f.add("grpc-health-port", "port of the gRPC health service (liveness and readiness probes)", 9003, port)
    f.add("metrics-port", "port of the metrics server (/metrics)", 9090, port)
    f.add("secure-serving", "serve ext_proc over TLS", True, boolean)
    f.add("cert-path", "directory with tls.crt and tls.key for ext_proc TLS (else a self-signed certificate)", None)
    f.add("enable-cert-reload", "reload tls.crt/tls.key from --cert-path when they change, keeping open streams",
          False, boolean)
    f.add("tls-min-version", "minimum TLS version of ext_proc: VersionTLS10, VersionTLS11, VersionTLS12 or "
          "VersionTLS13", "")
    f.add("tls-cipher-suites", "ext_proc TLS cipher suites, Go crypto/tls names, comma-separated (TLS <= 1.2 only)",
          None, action="append")
    f.add("health-checking", "also serve gRPC health (ext_proc service SERVING) on the ext_proc port", False, boolean)
    f.add("drain-timeout", "on SIGTERM: report not ready, release the leader lease and keep serving ext_proc this "
          "long before stopping (default 30s with Kubernetes discovery, 0 with --endpoints-file)", None, duration)
    f.add("ha-enable-leader-election", "run several replicas active-passive: only the holder of a Lease reports ready",
          False, boolean)
    # ---- the pool
    f.add("pool-name", "InferencePool name (also the pool label of metrics)", "", env="POOL_NAME")
    f.add("pool-namespace", "InferencePool namespace", "default", env="NAMESPACE")
    f.add("pool-group", "InferencePool API group", "inference.networking.k8s.io")
    f.add("endpoint-selector", "standalone discovery without an InferencePool: a label selector for the model-server "
          "pods (e.g. app=vllm), with --endpoint-target-ports", "")
    f.add("endpoint-target-ports", "ports of each selected pod that are endpoints, comma-separated (repeatable)",
          None, action="append")
    f.add("disable-endpoint-subset-filter", "ignore the proxy's x-gateway-destination-endpoint-subset hint", False,
          boolean)
    # ---- model-server metrics
    f.add("refresh-metrics-interval", "how often each endpoint's metrics are scraped", duration("50ms"), duration)
    f.add("refresh-prometheus-metrics-interval", "how often the pool gauges (inference_pool_*) are recomputed",
          duration("5s"), duration)
    f.add("metrics-staleness-threshold", "metrics older than this count as unknown", duration("2s"), duration)
    deprecated_metric = "use engineConfigs in EndpointPickerConfig instead"
    f.add("total-queued-requests-metric", "model-server metric for waiting requests", "vllm:num_requests_waiting",
          deprecated=deprecated_metric)
    f.add("total-running-requests-metric", "model-server metric for running requests", "vllm:num_requests_running",
          deprecated=deprecated_metric)
    f.add("kv-cache-usage-percentage-metric", "model-server metric for KV-cache usage (0..1)", "vllm:kv_cache_usage_perc",
          deprecated=deprecated_metric)
    f.add("lora-info-metric", "model-server metric for LoRA adapters", "vllm:lora_requests_info",
          deprecated=deprecated_metric)
    f.add("cache-info-metric", "model-server metric for KV-cache configuration", "vllm:cache_config_info",
          deprecated=deprecated_metric)
    via_config = "Configure via EndpointPickerConfig data layer plugin parameters instead."
    f.add("model-server-metrics-scheme", "scheme of the model servers' metrics endpoint: http or https", "http",
          deprecated=via_config)
    f.add("model-server-metrics-path", "URL path of the model servers' metrics", "/metrics", deprecated=via_config)
    f.add("model-server-metrics-port", "port of the model servers' metrics (0: the endpoint's own port)", 0, port,
          deprecated="This flag is deprecated and will be removed in a future release.")
    f.add("model-server-metrics-https-insecure-skip-verify", "with https, do not verify the model server's "
          "certificate", True, boolean, deprecated=via_config)
    # ---- observability
    f.add("v", "log verbosity: V(N) logs and below are written (2 default, 3 verbose, 4 debug, 5 trace)", 2, integer)
    f.add("zap-log-level", "log level (overrides -v): debug, info, error, panic or an integer N > 0 for V(N)", None,
          zap_level)
    f.add("zap-encoder", "log encoding: json (one JSON object per line) or console (text)", None,
          _choice("json", "console"))
    f.add("zap-stacktrace-level", "level from which log lines carry a stack trace: info, error or panic", None,
          _choice("info", "error", "panic"))
    f.add("zap-time-encoding", "log time format: epoch, millis, nano, iso8601, rfc3339 or rfc3339nano", None,
          _choice("epoch", "millis", "nano", "iso8601", "rfc3339", "rfc3339nano"))
    f.add("zap-devel", "controller-runtime development logging", True, boolean,
          not_applicable="upstream ignores it too (its logger is fixed to JSON production settings); "
                         "use --zap-encoder, --zap-log-level and -v")
    f.add("tracing", "export OpenTelemetry traces (OTEL_* environment: exporter, endpoint, sampler)", True, boolean)
    f.add("enable-pprof", "Go pprof handlers on the metrics port", True, boolean,
          not_applicable="Go's pprof profiles do not exist in a Python process; /debug/pprof is not served "
                         "(profile with py-spy instead)")
    f.add("enable-grpc-stream-metrics", "ext_proc stream metrics (llm_d_epp_extproc_stream*)", False, boolean,
          not_applicable="the ext_proc stream metrics are not implemented yet")
    f.add("metrics-endpoint-auth", "require a Kubernetes bearer token allowed to GET the path (TokenReview and "
          "SubjectAccessReview) on the metrics server", True, boolean)
    f.add("metrics-cert-dir", "serve metrics over TLS with tls.crt/tls.key from this directory", "")
    f.add("metrics-client-ca-file", "PEM CA: metrics clients must present a certificate it signed (needs "
          "--metrics-cert-dir)", "")
    # ---- configuration
    f.add("config-file", "EndpointPickerConfig YAML (plugins and scheduling profiles); default: upstream's default profile", None)
    f.add("config-text", "EndpointPickerConfig YAML given inline (instead of --config-file)", None)
    f.add("allow-experimental-plugins", "allow plugins of upstream's Alpha stability level in the config (else "
          "the EPP refuses to start)", False, boolean)
    f.add("emit-endpoint-scores", "give the proxy every scored candidate's score in the envoy.lb dynamic metadata "
          "(x-gateway-destination-endpoint-scores)", False, boolean)
    # ---- ours
    f.add("bind-address", "address every server binds", "0.0.0.0", env="EPP_BIND_ADDRESS")
    f.add("endpoints-file", "YAML file listing the pool's endpoints (standalone discovery); re-read on change", None)
    f.add("kubeconfig", "kubeconfig file (default: in-cluster credentials, else $KUBECONFIG or ~/.kube/config)", None)
    f.add("leader-election-lease-duration", "HA: how long a lease holds without renewal", duration("15s"), duration)
    f.add("leader-election-renew-deadline", "HA: a leader that cannot renew for this long steps down", duration("10s"),
          duration)
    f.add("leader-election-retry-period", "HA: how often the lease is renewed or tried", duration("2s"), duration)
    f.add("metrics-scrape-timeout", "timeout of one model-server metrics scrape", duration("1s"), duration)
    f.add("ext-proc-server", "ext_proc transport: native (lean HTTP/2, fastest) or grpcio", "native",
          choices=("native", "grpcio"))
    f.add("max-num-of-endpoints", "endpoints per decision: more than 1 adds fallbacks to the destination list", 1, int)
    f.add("objective", "an InferenceObjective priority for header x-gateway-inference-objective, NAME=PRIORITY "
          "(repeatable; priority < 0 is sheddable)", None, objective, action="append")
    f.add("decision-header", "add x-epp-decision (candidates' scores and the pick) to responses", False, boolean)
    # the web view (epp.observe): off unless asked for, as recording every decision costs each request a little
    f.add("ui", "serve a live web view of the pool and the routing decisions at /ui (metrics port unless --ui-port) and "
          "record every decision for it and for /debug/decisions", False, boolean)
    f.add("ui-port", "serve the web view on its own port (0: on the metrics port)", 0, port)
    f.add("ui-decisions", "decisions the web view and /debug/decisions keep (a ring buffer)", 1000, int)
    f.add("ui-show-prompts", "show each request's prompt text (its first 2 KB) in the web view and /debug/decisions; "
          "prompts are user data, so this is off unless set", False, boolean)
    f.add("max-request-body-bytes", "larger request bodies are refused with 413", 128 << 20, int)
    f.add("shutdown-grace-period", "after the drain window, how long in-flight streams may take to finish",
          duration("15s"), duration)
    # ext_proc transport limits (docs/transport.md): the first two are upstream's, the rest ours
    f.add("grpc-max-recv-msg-size", "largest gRPC message received; larger is RESOURCE_EXHAUSTED on its stream "
          "(BUFFERED mode sends a whole body as one message)", 4 << 20, size)
    f.add("grpc-max-send-msg-size", "largest gRPC message sent", (1 << 31) - 1, size)
    f.add("grpc-max-header-list-size", "largest gRPC call metadata (HTTP/2 header list); larger is "
          "RESOURCE_EXHAUSTED on its stream, more than twice it closes the connection", 64 << 10, size)
    f.add("grpc-max-concurrent-streams", "ext_proc calls per connection (SETTINGS_MAX_CONCURRENT_STREAMS); "
          "more are refused (REFUSED_STREAM)", 1024, positive)
    f.add("grpc-max-glitches-per-second", "per connection: resets before a first message, refused streams, "
          "SETTINGS, PRIORITY, empty and unknown frames; more is GOAWAY(ENHANCE_YOUR_CALM); 0: no limit", 1000, count)
    f.add("grpc-keepalive-min-time", "pings closer than this without reply data in between are strikes; the "
          "third is GOAWAY(ENHANCE_YOUR_CALM, too_many_pings) (grpc-go's keepalive enforcement)",
          duration("5m"), duration)
    return ap


TLS_VERSIONS = {"VersionTLS10": "TLSv1", "VersionTLS11": "TLSv1_1", "VersionTLS12": "TLSv1_2", "VersionTLS13": "TLSv1_3"}
DEPRECATED_METRIC_FLAGS = ("total-queued-requests-metric", "total-running-requests-metric",
                           "kv-cache-usage-percentage-metric", "lora-info-metric", "cache-info-metric")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses as pflag does. Bad syntax or an unknown flag: usage and SystemExit(2). A validation error
    raises FlagError (exit 1). The namespace also carries `given` (flag names set on the command line),
    `stray` (ignored words) and `notices` (warnings to log once logging is set up)."""
    ap = build_parser()
    pf: PFlags = ap.pflags  # type: ignore[attr-defined]
    words, given, stray = pf.normalize(list(sys.argv[1:] if argv is None else argv))
    args = ap.parse_args(words)
    args.given = set(given)
    args.stray = stray
    notices: list[str] = []
    for name in dict.fromkeys(given):
        if name in pf.deprecated:
            notices.append(f"Flag --{name} has been deprecated, {pf.deprecated[name]}")
        if name in pf.not_applicable and getattr(args, name.replace("-", "_")):
            notices.append(f"--{name} is accepted but has no effect here: {pf.not_applicable[name]}")
    if stray:
        notices.append(f"ignoring arguments that are not flags: {stray} (as upstream; note that a bool flag takes "
                       f"its value only as --flag=value)")
    args.notices = notices
    _validate(args)
    return args


def _validate(args: argparse.Namespace) -> None:
    """Upstream's Complete() and Validate(), in their order and wording where they have one."""
    sources = [n for n, v in (("--endpoints-file", args.endpoints_file), ("--pool-name", args.pool_name),
                                ("--endpoint-selector", args.endpoint_selector)) if v]
    if args.endpoints_file is None and len(sources) != 1:
        raise FlagError("either pool-name or endpoint-selector must be set")
    if len(sources) != 1:
        raise FlagError("give exactly one source of endpoints: --pool-name (an InferencePool), --endpoint-selector "
                        "with --endpoint-target-ports (pods by label), or --endpoints-file (a YAML list); got "
                        + " and ".join(sources))
    ports: list[int] = []
    for item in args.endpoint_target_ports or ():
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                p = int(part)
            except ValueError:
                raise FlagError(f'invalid argument "{item}" for "--endpoint-target-ports" flag') from None
            if not 0 <= p <= 65535:
                raise FlagError(f'invalid port number {p} in "endpoint-target-ports"')
            if p not in ports:   # upstream removes duplicates
                ports.append(p)
    args.endpoint_target_ports = ports
    if args.endpoint_selector and not 1 <= len(ports) <= 8:
        raise FlagError('flag "endpoint-target-ports" should have length from 1 to 8')
    if args.config_file and args.config_text:
        raise FlagError('both the "config-file" and "config-text" flags cannot be set at the same time')
    if args.metrics_client_ca_file and not os.path.exists(args.metrics_client_ca_file):
        raise FlagError(f"metrics TLS cert file unreadable: {args.metrics_client_ca_file}")
    if args.metrics_cert_dir:
        for name in ("tls.crt", "tls.key"):
            if not os.path.exists(os.path.join(args.metrics_cert_dir, name)):
                raise FlagError(f"metrics TLS cert file unreadable: {os.path.join(args.metrics_cert_dir, name)}")
    if args.tls_min_version and args.tls_min_version not in TLS_VERSIONS:
        raise FlagError(f'invalid tls-min-version "{args.tls_min_version}": use one of {", ".join(TLS_VERSIONS)}')
    suites = [s.strip() for item in args.tls_cipher_suites or () for s in item.split(",") if s.strip()]
    if suites:
        from .server.tls import openssl_cipher_names
        try:
            openssl_cipher_names(suites)
        except ValueError as e:
            raise FlagError(f"invalid tls-cipher-suites: {e}") from None
    args.tls_cipher_suites = suites
    if args.metrics_client_ca_file and not args.metrics_cert_dir:
        raise FlagError('"metrics-client-ca-file" requires "metrics-cert-dir"')
    if args.metrics_cert_dir and not args.metrics_client_ca_file and not args.metrics_endpoint_auth:
        raise FlagError('"metrics-cert-dir" enables metrics TLS without authentication; set "metrics-client-ca-file" '
                        'or "metrics-endpoint-auth"')
    scheme = args.model_server_metrics_scheme
    if scheme not in ("http", "https"):
        raise FlagError(f"unexpected \"{scheme}\" value for \"model-server-metrics-scheme\" flag, it can only be set "
                        f"to 'http' or 'https'")
    if args.v < 0:       # upstream resets a negative verbosity to the default (after deriving the level from it)
        args.zap_level_from_v = -args.v
        args.v = 2
    else:
        args.zap_level_from_v = -args.v
    if args.drain_timeout is None:
        args.drain_timeout = 0.0 if args.endpoints_file else DEFAULT_DRAIN_TIMEOUT
    if args.max_num_of_endpoints < 1:
        raise FlagError("--max-num-of-endpoints must be >= 1")
    if args.ui_decisions < 1:
        raise FlagError("--ui-decisions must be >= 1")
    if args.ui_port and args.ui_port == args.metrics_port:
        raise FlagError("--ui-port is the metrics port: leave it out (0) to serve the web view there")
    if args.refresh_metrics_interval <= 0:
        raise FlagError("--refresh-metrics-interval must be positive")


def processed(args: argparse.Namespace) -> dict:
    """Every flag's value, as upstream logs them once ("Flags processed"); the deprecated metric flags
    are left out as upstream leaves them out."""
    skip = {n.replace("-", "_") for n in DEPRECATED_METRIC_FLAGS} | {"given", "stray", "notices", "zap_level_from_v",
                                                                     "_pflags", "config_text"}
    out = {k.replace("_", "-"): v for k, v in vars(args).items() if k not in skip}
    if args.config_text:
        out["config-text"] = f"<{len(args.config_text)} characters>"
    return out


_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(?:([KMGTPE]i|[kMGTPE])|[eE](\d+))?")
_SIZE_UNIT = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
              **{f"{u}i": 1 << (10 * (i + 1)) for i, u in enumerate("KMGTPE")}}


def size(text: str) -> int:
    """A byte count as upstream's EPP reads one: a Kubernetes quantity ("4Mi", "25M", "1e6"), with an
    optional trailing B ("10MiB", "25MB"), or a plain number; 0 means the default, as upstream."""
    t = text.strip()
    if len(t) > 1 and t[-1] in "Bb":
        t = t[:-1]
    m = _SIZE.fullmatch(t)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (use e.g. 4MiB, 25MB, 65536)")
    scale = _SIZE_UNIT[m.group(2)] if m.group(2) else 10 ** int(m.group(3)) if m.group(3) else 1
    return int(float(m.group(1)) * scale) if "." in m.group(1) else int(m.group(1)) * scale


def positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r} (a positive integer)")
    return int(text)


def count(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"invalid count {text!r} (a non-negative integer)")
    return int(text)
