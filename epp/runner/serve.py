"""Builds the EPP from the flags and runs it until SIGTERM/SIGINT, then drains."""
from __future__ import annotations

import asyncio
import logging
import os
import signal

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pbg
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest
from prometheus_client import REGISTRY, start_http_server

from ..datalayer.address import host_port
from ..datalayer.file_source import EndpointsFile
from ..datalayer.metrics_parse import MetricNames
from ..datalayer.scraper import Scraper
from ..datalayer.store import EndpointStore
from ..flowcontrol.config import FEATURE_GATE, IGNORED_WARNING, check_shape, settings_ignored
from ..flowcontrol.config import decode as decode_flow_control
from ..flowcontrol.controller import FlowController
from ..flowcontrol.metrics import FlowMetrics
from ..metrics import EPPMetrics
from ..requestcontrol.admission import FlowAdmission
from ..requestcontrol.director import Director
from ..scheduling.config import DEFAULT_CONFIG, SchedulingConfig, default_saturation_detector
from ..scheduling.framework import SaturationDetector
from ..scheduling.config import load as load_config
from ..scheduling.scheduler import from_config
from ..server.extproc import ExternalProcessor
from ..server.h2grpc import GrpcMethodServer
from ..server.health import Health
from ..server.pool_metrics import PoolCollector
from ..server.stream import RequestStream
from ..server.tls import server_credentials, ssl_context

EXT_PROC_METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"

log = logging.getLogger("epp")


def _report_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped: %s", task.get_name(), task.exception(), exc_info=task.exception())


def scheduling_config(args) -> SchedulingConfig:
    """The config file, the inline text, or upstream's default; raises ConfigError or OSError."""
    if args.config_file:
        try:
            with open(args.config_file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise OSError(f"failed to load config from a file {args.config_file!r}: {e.strerror or e}") from None
        return load_config(text, args.config_file, args.max_num_of_endpoints)
    if args.config_text:
        return load_config(args.config_text, "--config-text", args.max_num_of_endpoints)
    return load_config(DEFAULT_CONFIG, "default config", args.max_num_of_endpoints)


def flow_control(args, cfg: SchedulingConfig, saturation: SaturationDetector, store: EndpointStore,
                 pool_name: str) -> FlowController | None:
    """The flow controller when the flowControl feature gate is on (a bad section raises ConfigError);
    None for the legacy path, which ignores the section but its saturation detector, and says so."""
    if not cfg.feature_gates.get(FEATURE_GATE):
        if cfg.flow_control is not None:
            check_shape(cfg.flow_control, cfg.source)
        if settings_ignored(cfg.flow_control):
            log.warning(IGNORED_WARNING)
        return None
    fc = decode_flow_control(cfg.flow_control, cfg.plugins, cfg.source)
    # how long a confirmed eviction takes to show in the detector's reading (upstream's derivation):
    # in-flight counts move at once; scraped metrics need a scrape past the staleness window
    if saturation.type_name == "concurrency-detector":
        grace = 0.01
    else:
        grace = args.refresh_metrics_interval + args.metrics_staleness_threshold + 0.25
    log.info("flow control: %s; saturation detector %s", fc.describe(), saturation.name)
    return FlowController(fc, saturation, store.snapshot, FlowMetrics(pool_name), eviction_grace=grace)


async def serve(args, store: EndpointStore | None = None, ready_event: asyncio.Event | None = None) -> int:
    cfg = scheduling_config(args)  # a bad config is fatal at start: raises with the reason
    store = store or EndpointStore()
    pool_name = args.pool_name or os.path.basename(args.endpoints_file or "") or args.endpoint_selector
    saturation = cfg.saturation or default_saturation_detector(args.metrics_staleness_threshold)
    flow = flow_control(args, cfg, saturation, store, pool_name)
    source = None
    if args.endpoints_file:
        source = EndpointsFile(args.endpoints_file, store)
        source.load()  # an unusable file is fatal at start: raises with the reason

    metrics = EPPMetrics()
    scheduler = from_config(cfg, metrics)
    director = Director(store, scheduler, metrics, staleness=args.metrics_staleness_threshold,
                        objectives=dict(args.objective or []), explain=args.decision_header, saturation=saturation,
                        admission=FlowAdmission(flow) if flow is not None else None)
    log.info("scheduling: %s", cfg.describe())
    kube = None
    if source is None:
        from .kube import KubernetesSources
        kube = KubernetesSources(args, store, director)
        await kube.start()  # no credentials or kubeconfig is fatal at start
    REGISTRY.register(PoolCollector(store, pool_name, args.metrics_staleness_threshold, scheduler.index_size))
    names = MetricNames(waiting=args.total_queued_requests_metric, running=args.total_running_requests_metric,
                        kv_usage=(args.kv_cache_usage_percentage_metric, "vllm:gpu_cache_usage_perc"),
                        lora_info=args.lora_info_metric, cache_info=args.cache_info_metric)
    scraper = Scraper(store, args.refresh_metrics_interval, args.metrics_scrape_timeout, vllm_names=names)
    if flow is not None:
        # queued requests are released as capacity frees: new metrics, or a changed pool (completions
        # are reported by request control)
        scraper.listeners.append(flow.metrics_changed)
        store.on_change(lambda added, removed: flow.metrics_changed())

    max_msg = max(args.max_request_body_bytes + (1 << 20), 4 << 20)
    target = host_port(args.bind_address, args.grpc_port)
    if args.ext_proc_server == "grpcio":
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", max_msg), ("grpc.max_send_message_length", max_msg),
            ("grpc.so_reuseport", 0), ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1)])
        processor = ExternalProcessor(director, args.max_request_body_bytes)
        pbg.add_ExternalProcessorServicer_to_server(processor, server)
        if args.secure_serving:
            server.add_secure_port(target, server_credentials(args.cert_path))
        else:
            server.add_insecure_port(target)
        active = lambda: processor.active  # noqa: E731
    else:
        server = GrpcMethodServer(EXT_PROC_METHOD, lambda: RequestStream(director, args.max_request_body_bytes),
                                  ProcessingRequest, max_msg)
        active = lambda: server.active_streams  # noqa: E731

    health = Health()
    health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health.add_to(health_server)
    health_server.add_insecure_port(host_port(args.bind_address, args.grpc_health_port))
    await health.set(live=True, ready=False)

    http_server, http_thread = start_http_server(args.metrics_port, addr=args.bind_address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    if args.ext_proc_server == "grpcio":
        await server.start()
    else:
        await server.start(args.bind_address, args.grpc_port, ssl_context(args.cert_path) if args.secure_serving else None)
    await health_server.start()
    scraper.start()
    # plugins with background work (e.g. consuming KV events) run beside the servers
    background = [asyncio.create_task(job, name=name) for name, job in scheduler.background_jobs(store)]
    for task in background:
        task.add_done_callback(_report_failure)
    watcher = asyncio.create_task(source.watch() if source else asyncio.Event().wait(), name="endpoints file")
    stopping = False

    async def readiness() -> None:
        # ready once discovery has delivered the pool, and in HA mode only while holding the lease
        while True:
            await health.set(live=True, ready=not stopping and store.synced and (kube is None or kube.is_leader))
            await asyncio.sleep(0.2)
    ready_task = asyncio.create_task(readiness(), name="readiness")
    await health.set(live=True, ready=store.synced and (kube is None or kube.is_leader))
    log.info("epp serving ext_proc on %s (%s, %s server), health on %d, metrics on %d; %d endpoints from %s",
             target, "TLS" if args.secure_serving else "plaintext", args.ext_proc_server, args.grpc_health_port, args.metrics_port,
             len(store.snapshot()), args.endpoints_file or args.pool_name or args.endpoint_selector)
    if ready_event is not None:
        ready_event.set()

    await stop.wait()
    log.info("shutting down: no new streams; %d in flight get up to %.1fs", active(), args.shutdown_grace_period)
    stopping = True
    ready_task.cancel()
    await health.set(live=True, ready=False)
    if flow is not None:
        # queued requests are answered now (503 rejected-shutting-down), not left to the grace; the drain
        # (GOAWAY) waits until the proxy has taken those answers and closed their streams: GOAWAY right
        # behind thousands of immediate responses made Envoy lose some of the replies to its clients
        answered = flow.stop()
        if answered:
            target = max(0, active() - answered)
            loop = asyncio.get_running_loop()
            until = loop.time() + min(5.0, args.shutdown_grace_period)
            while active() > target and loop.time() < until:
                await asyncio.sleep(0.02)
    await server.stop(args.shutdown_grace_period)
    watcher.cancel()
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    if kube is not None:
        await kube.stop()
    await scraper.stop()
    await health_server.stop(0)
    http_server.shutdown()
    log.info("stopped")
    return 0
