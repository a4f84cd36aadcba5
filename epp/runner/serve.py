"""Builds the EPP from the flags and runs it until SIGTERM/SIGINT, then drains."""
from __future__ import annotations

import asyncio
import logging
import os
import signal

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pbg
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest
from prometheus_client import REGISTRY

from .. import tracing
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
from ..observe.admin import AdminServer, admin_apps
from ..observe.observer import Observer
from ..requestcontrol.admission import FlowAdmission
from ..requestcontrol.director import Director
from ..scheduling.config import DEFAULT_CONFIG, SchedulingConfig, default_saturation_detector
from ..scheduling.config import load as load_config
from ..scheduling.plugins.core_metrics_extractor import CoreMetricsExtractor
from ..scheduling.plugins.metrics_data_source import MetricsDataSource
from ..scheduling.framework import SaturationDetector
from ..scheduling.scheduler import from_config
from ..server.extproc import ExternalProcessor
from ..server.h2grpc import GrpcMethodServer
from ..server.h2limits import Limits
from ..server.health import Health, ext_proc_port_health
from ..server.metrics_http import MetricsServer
from ..server.metrics_http import tls_context as metrics_tls
from ..server.pool_metrics import PoolCollector
from ..server.stream import RequestStream
from ..server.tls import CertReloader, server_credentials, ssl_context

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
    # GIE's --model-server-metrics-* flags (gone in llm-d v0.10) win over the data source where given
    given = getattr(args, "given", ())
    path = args.model_server_metrics_path if "model-server-metrics-path" in given else source.path
    port = args.model_server_metrics_port if "model-server-metrics-port" in given else source.port
    scheme = args.model_server_metrics_scheme if "model-server-metrics-scheme" in given else source.scheme
    insecure = (args.model_server_metrics_https_insecure_skip_verify
                if "model-server-metrics-https-insecure-skip-verify" in given else source.insecure_skip_verify)
    return Scraper(store, source.scrape_interval(args.refresh_metrics_interval), args.metrics_scrape_timeout,
                   path=path, vllm_names=vllm_names, names_for=names_for, port=port, scheme=scheme,
                   insecure_skip_verify=insecure, ca_cert=source.ca_cert, client_cert=source.client_cert,
                   client_key=source.client_key)


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


def _warn_inapplicable(args, kube) -> None:
    """Flags that parse but cannot do here what they do upstream: one line each at start."""
    if args.enable_cert_reload and not (args.secure_serving and args.cert_path):
        log.warning("--enable-cert-reload has no effect without --secure-serving and --cert-path (as upstream)")
    if args.ext_proc_server == "grpcio" and (args.tls_min_version or args.tls_cipher_suites):
        log.warning("--tls-min-version and --tls-cipher-suites apply to the native ext_proc server only; grpcio "
                    "serves TLS 1.2 and 1.3 with its own cipher list")
    if kube is None and args.metrics_endpoint_auth and "metrics-endpoint-auth" in args.given:
        log.warning("--metrics-endpoint-auth needs Kubernetes (TokenReview and SubjectAccessReview); with "
                    "--endpoints-file /metrics is served without it, as upstream's file-discovery mode serves it")


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


def _metrics_server(args, kube, others) -> MetricsServer:
    authorize = None
    if kube is not None and args.metrics_endpoint_auth:
        from ..datalayer.k8s.reviews import AccessReviews
        reviews = AccessReviews(kube.api)
        loop = asyncio.get_running_loop()

        def authorize(token, path, verb):
            # runs in the metrics server's thread; the API calls run on the event loop
            return asyncio.run_coroutine_threadsafe(reviews.check(token, path, verb), loop).result(30)
    tls = metrics_tls(args.metrics_cert_dir, args.metrics_client_ca_file) if args.metrics_cert_dir else None
    return MetricsServer(args.bind_address, args.metrics_port, authorize=authorize, tls=tls, others=others)


async def serve(args, store: EndpointStore | None = None, ready_event: asyncio.Event | None = None) -> int:
    if args.tracing:
        tracing.setup()
    try:
        return await _serve(args, store, ready_event)
    finally:
        tracing.shutdown()


async def _serve(args, store: EndpointStore | None, ready_event: asyncio.Event | None) -> int:
    cfg = scheduling_config(args)  # a bad config is fatal at start: raises with the reason
    store = store or EndpointStore()
    pool_name = args.pool_name or os.path.basename(args.endpoints_file or "") or args.endpoint_selector
    saturation = cfg.saturation or default_saturation_detector(args.metrics_staleness_threshold)
    flow = flow_control(args, cfg, saturation, store, pool_name)   # None: the legacy path
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
    observer = Observer(REGISTRY, record=args.ui, size=args.ui_decisions, show_prompts=args.ui_show_prompts)
    director = Director(store, scheduler, metrics, staleness=args.metrics_staleness_threshold,
                        objectives=dict(args.objective or []), explain=args.decision_header, saturation=saturation,
                        subset_filter=not args.disable_endpoint_subset_filter, observe=observer,
                        parsers=cfg.parsers, emit_scores=args.emit_endpoint_scores,
                        admission=FlowAdmission(flow) if flow is not None else None)
    log.info("scheduling: %s", cfg.describe())
    kube = None
    if source is None:
        from .kube import KubernetesSources
        kube = KubernetesSources(args, store, director)
        await kube.start()  # no credentials or kubeconfig is fatal at start
    _warn_inapplicable(args, kube)
    REGISTRY.register(PoolCollector(store, pool_name, args.metrics_staleness_threshold, scheduler.index_size,
                                    scheduler.index_sizes, refresh=args.refresh_prometheus_metrics_interval))
    names = MetricNames(waiting=args.total_queued_requests_metric, running=args.total_running_requests_metric,
                        kv_usage=(args.kv_cache_usage_percentage_metric, "vllm:gpu_cache_usage_perc"),
                        lora_info=args.lora_info_metric, cache_info=args.cache_info_metric)
    scraper = _scraper(cfg, store, args, names)
    if flow is not None:
        # queued requests are released as capacity frees: new metrics, or a changed pool (completions
        # are reported by request control)
        if scraper is not None:
            scraper.listeners.append(flow.metrics_changed)
        store.on_change(lambda added, removed: flow.metrics_changed())

    limits = Limits.from_args(args)
    reloader = CertReloader(args.cert_path) if args.secure_serving and args.enable_cert_reload and args.cert_path \
        else None
    transport = args.ext_proc_server
    if args.health_checking and transport == "native":
        # the native server serves ext_proc alone; grpcio can carry the health service beside it
        log.info("--health-checking: ext_proc is served by grpcio, which also answers gRPC health on its port")
        transport = "grpcio"
    target = host_port(args.bind_address, args.grpc_port)
    if transport == "grpcio":
        server = grpc.aio.server(options=[
            *limits.grpcio_options(), ("grpc.so_reuseport", 0), ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1)])
        processor = ExternalProcessor(director, args.max_request_body_bytes)
        pbg.add_ExternalProcessorServicer_to_server(processor, server)
        if args.health_checking:
            await ext_proc_port_health(server)
        if args.secure_serving:
            server.add_secure_port(target, server_credentials(args.cert_path, reloader))
        else:
            server.add_insecure_port(target)
        active = lambda: processor.active  # noqa: E731
        unsent = lambda: 0  # noqa: E731
    else:
        server = GrpcMethodServer(EXT_PROC_METHOD, lambda: RequestStream(director, args.max_request_body_bytes),
                                  ProcessingRequest, limits)
        active = lambda: server.active_streams  # noqa: E731
        unsent = lambda: server.unsent_bytes  # noqa: E731

    health = Health(synced=lambda: store.synced, leader=lambda: kube is None or kube.is_leader,
                    leader_election=bool(kube is not None and args.ha_enable_leader_election))
    health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health.add_to(health_server)
    health_server.add_insecure_port(host_port(args.bind_address, args.grpc_health_port))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # /metrics, /debug/* and the web view (--ui) on the metrics port, the web view alone on --ui-port:
    # served from threads, reading state on this loop
    admin, ui_app = admin_apps(loop, args.ui_port, store, scheduler, args.metrics_staleness_threshold, observer.log)
    metrics_server = _metrics_server(args, kube, admin)
    metrics_server.start()
    ui_server = AdminServer(ui_app, args.bind_address, args.ui_port) if ui_app is not None else None

    def on_signal() -> None:
        if stop.is_set():   # a second signal: exit at once, as upstream (controller-runtime) does
            log.warning("second shutdown signal: exiting now")
            os._exit(1)
        stop.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)

    if transport == "grpcio":
        await server.start()
    else:
        ctx = None
        if args.secure_serving:
            ctx = ssl_context(args.cert_path, args.tls_min_version, args.tls_cipher_suites)
            if reloader is not None:
                reloader.attach(ctx)
        await server.start(args.bind_address, args.grpc_port, ctx)
    await health_server.start()
    if scraper is not None:
        scraper.start()
    # plugins with background work (e.g. consuming KV events) run beside the servers
    background = [asyncio.create_task(job, name=name) for name, job in scheduler.background_jobs(store)]
    if reloader is not None:
        background.append(asyncio.create_task(reloader.run(), name="cert reload"))
    for task in background:
        task.add_done_callback(_report_failure)
    watcher = asyncio.create_task(source.watch() if source and watch_file else asyncio.Event().wait(),
                                  name="endpoints file")
    log.info("epp serving ext_proc on %s (%s, %s server), health on %d, metrics on %d; %d endpoints from %s",
             target, "TLS" if args.secure_serving else "plaintext", transport, args.grpc_health_port,
             args.metrics_port, len(store.snapshot()),
             args.endpoints_file or args.pool_name or args.endpoint_selector)
    if args.ui:
        log.info("web view on http://%s/ui", host_port(args.bind_address,
                                                       ui_server.port if ui_server else metrics_server.port))
    if ready_event is not None:
        ready_event.set()

    await stop.wait()
    # upstream's shutdown: not ready at once (Kubernetes takes the pod out of the Service), the lease
    # released (a standby leads now), ext_proc kept serving for the drain window, then stopped
    health.draining = True
    log.info("Shutdown signal received: draining (NotServing) while finishing in-flight requests",
             extra={"kv": {"drainTimeout": f"{args.drain_timeout:g}s"}})
    if kube is not None:
        await kube.release_leadership()
    if args.drain_timeout > 0:
        await asyncio.sleep(args.drain_timeout)
        log.info("Drain window elapsed, stopping ext_proc server")
    if flow is not None:
        # queued requests are answered now (503 rejected-shutting-down), not left to the grace; the stop
        # (GOAWAY) waits until those streams are over and the proxy has read every byte of them: GOAWAY right
        # behind thousands of immediate responses made Envoy lose some of the replies to its clients
        answered = flow.stop()
        if answered:
            left = max(0, active() - answered)
            loop = asyncio.get_running_loop()
            until = loop.time() + min(5.0, args.shutdown_grace_period)
            while (active() > left or unsent()) and loop.time() < until:
                await asyncio.sleep(0.02)
    log.info("shutting down: no new streams; %d in flight get up to %.1fs", active(), args.shutdown_grace_period)
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
    for app in (admin, ui_app):
        if app is not None:
            app.closing.set()     # open event streams end at their next tick
    metrics_server.shutdown()
    if ui_server is not None:
        ui_server.stop()
    log.info("stopped")
    return 0
