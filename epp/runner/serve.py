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
from ..metrics import EPPMetrics
from ..requestcontrol.director import Director
from ..scheduling.config import DEFAULT_CONFIG, SchedulingConfig, default_saturation_detector
from ..scheduling.config import load as load_config
from ..scheduling.plugins.core_metrics_extractor import CoreMetricsExtractor
from ..scheduling.plugins.metrics_data_source import MetricsDataSource
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


def _scraper(cfg: SchedulingConfig, store: EndpointStore, args, vllm_names: MetricNames) -> Scraper | None:
    """The model-server scraper as dataLayer configures it: metrics-data-source's path, port and
    interval, core-metrics-extractor's metric names per engine; None when no metrics source is
    configured (dataLayer.injectDefaults: false), as upstream then collects no metrics."""
    source = extractor = None
    for src, extractors in cfg.data_layer.sources:
        if isinstance(src, MetricsDataSource) and source is None:
            source = src
            extractor = next((e for e in extractors if isinstance(e, CoreMetricsExtractor)), None)
    if source is None:
        log.warning("no metrics-data-source in dataLayer: model-server metrics are not collected")
        return None
    names_for = None
    if extractor is not None and extractor.customized:
        names_for = extractor.names_for
    return Scraper(store, source.scrape_interval(args.refresh_metrics_interval), args.metrics_scrape_timeout,
                   path=source.path, vllm_names=vllm_names, names_for=names_for, port=source.port)


def scheduling_config(args) -> SchedulingConfig:
    """The config file, the inline text, or upstream's default; raises ConfigError or OSError."""
    if args.config_file:
        try:
            with open(args.config_file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise OSError(f"failed to load config from a file {args.config_file!r}: {e.strerror or e}") from None
        return load_config(text, args.config_file, args.max_num_of_endpoints, args.allow_experimental_plugins)
    if args.config_text:
        return load_config(args.config_text, "--config-text", args.max_num_of_endpoints,
                           args.allow_experimental_plugins)
    return load_config(DEFAULT_CONFIG, "default config", args.max_num_of_endpoints)


async def serve(args, store: EndpointStore | None = None, ready_event: asyncio.Event | None = None) -> int:
    cfg = scheduling_config(args)  # a bad config is fatal at start: raises with the reason
    store = store or EndpointStore()
    source = None
    watch_file = True
    discovery = cfg.data_layer.discovery
    if args.endpoints_file:
        source = EndpointsFile(args.endpoints_file, store)
    elif discovery is not None:
        # dataLayer.discovery (file-discovery) replaces Kubernetes discovery, as upstream
        source = EndpointsFile(discovery.path, store)
        watch_file = discovery.watch
    if source is not None:
        source.load()  # an unusable file is fatal at start: raises with the reason

    metrics = EPPMetrics()
    scheduler = from_config(cfg, metrics)
    saturation = cfg.saturation or default_saturation_detector(args.metrics_staleness_threshold)
    director = Director(store, scheduler, metrics, staleness=args.metrics_staleness_threshold,
                        objectives=dict(args.objective or []), explain=args.decision_header, saturation=saturation,
                        parsers=cfg.parsers, emit_scores=args.emit_endpoint_scores)
    log.info("scheduling: %s", cfg.describe())
    kube = None
    if source is None:
        from .kube import KubernetesSources
        kube = KubernetesSources(args, store, director)
        await kube.start()  # no credentials or kubeconfig is fatal at start
    REGISTRY.register(PoolCollector(store, args.pool_name or os.path.basename(args.endpoints_file or "")
                                    or args.endpoint_selector,
                                    args.metrics_staleness_threshold, scheduler.index_size, scheduler.index_sizes))
    names = MetricNames(waiting=args.total_queued_requests_metric, running=args.total_running_requests_metric,
                        kv_usage=(args.kv_cache_usage_percentage_metric, "vllm:gpu_cache_usage_perc"),
                        lora_info=args.lora_info_metric, cache_info=args.cache_info_metric)
    scraper = _scraper(cfg, store, args, names)

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
    if scraper is not None:
        scraper.start()
    # plugins with background work (e.g. consuming KV events) run beside the servers
    background = [asyncio.create_task(job, name=name) for name, job in scheduler.background_jobs(store)]
    for task in background:
        task.add_done_callback(_report_failure)
    watcher = asyncio.create_task(source.watch() if source and watch_file else asyncio.Event().wait(),
                                  name="endpoints file")
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
    await server.stop(args.shutdown_grace_period)
    watcher.cancel()
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    if kube is not None:
        await kube.stop()
    if scraper is not None:
        await scraper.stop()
    await health_server.stop(0)
    http_server.shutdown()
    log.info("stopped")
    return 0
