"""Runs the sidecar: one listener per data-parallel rank, the SSRF allowlist, optional TLS on the
listeners and an optional /metrics port."""
from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
import tempfile
from collections import Counter

from aiohttp import web

from .allowlist import Allowlist
from .options import Config
from .proxy import Proxy, new_session

log = logging.getLogger("epp.sidecar")
CERT_RELOAD_INTERVAL = 5.0


def _self_signed_files(directory: str) -> tuple[str, str]:
    """A throw-away certificate for `--secure-proxy` without `--cert-path` (upstream does the same)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "epp-sidecar")])
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    builder = x509.CertificateBuilder(subject, subject, key.public_key(), x509.random_serial_number(), start,
                                      start + datetime.timedelta(days=3650))
    pems = {"tls.crt": builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM),
            "tls.key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())}
    for name, data in pems.items():
        with os.fdopen(os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(data)
    return os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")


def server_ssl_context(cert_path: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_path:
        ctx.load_cert_chain(os.path.join(cert_path, "tls.crt"), os.path.join(cert_path, "tls.key"))
        return ctx
    with tempfile.TemporaryDirectory(prefix="epp-sidecar-tls-") as d:
        ctx.load_cert_chain(*_self_signed_files(d))
    return ctx


async def _reload_certs(ctx: ssl.SSLContext, cert_path: str) -> None:
    """A renewed certificate (cert-manager, a rotated Secret) is served to new connections."""
    crt, key = os.path.join(cert_path, "tls.crt"), os.path.join(cert_path, "tls.key")

    def stamp():
        return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in map(os.stat, (crt, key)))
    last = stamp()
    while True:
        await asyncio.sleep(CERT_RELOAD_INTERVAL)
        try:
            now = stamp()
            if now != last:
                ctx.load_cert_chain(crt, key)
                last = now
                log.info("reloaded the TLS certificate from %s", cert_path)
        except (OSError, ssl.SSLError) as e:
            log.error("TLS certificate not reloaded, keeping the current one: %s", e)


class SidecarServer:
    def __init__(self, cfg: Config, allowlist: Allowlist | None = None) -> None:
        self.cfg = cfg
        self.allowlist = allowlist or Allowlist(cfg.enable_ssrf_protection)
        self.stats: Counter = Counter()
        self.session = None
        self.runners: list[web.AppRunner] = []
        self.ports: list[int] = []
        self.metrics_port: int | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        cfg = self.cfg
        pool = (cfg.pool_namespace, cfg.pool_name, cfg.pool_group) if cfg.pool_name else None
        await self.allowlist.start(cfg.endpoints_file, cfg.endpoints_poll_interval, pool)
        ctx = server_ssl_context(cfg.cert_path) if cfg.secure_proxy else None
        if ctx is not None and cfg.cert_path:
            self._tasks.append(asyncio.create_task(_reload_certs(ctx, cfg.cert_path)))
        self.session = new_session()
        for rank in range(cfg.data_parallel_size):
            proxy = Proxy(cfg, self.allowlist, self.session, cfg.model_server_port + rank, self.stats)
            port = cfg.port + rank if cfg.port else 0
            self.ports.append(await self._listen(proxy.app(), port, ctx))
        if cfg.metrics_port:
            app = web.Application()
            app.router.add_get("/metrics", self._metrics)
            self.metrics_port = await self._listen(app, cfg.metrics_port, None)
        log.info("epp-sidecar listening on %s port(s) %s (%s) in front of the model server on %s:%s; "
                 "SSRF protection %s", cfg.bind_address, self.ports, "TLS" if ctx else "plain HTTP",
                 cfg.model_server_host, cfg.model_server_port,
                 "on" if cfg.enable_ssrf_protection else "off")

    async def _listen(self, app: web.Application, port: int, ctx: ssl.SSLContext | None) -> int:
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, keepalive_timeout=300,
                               shutdown_timeout=self.cfg.shutdown_grace_period)
        await runner.setup()
        self.runners.append(runner)
        site = web.TCPSite(runner, self.cfg.bind_address, port, ssl_context=ctx, reuse_address=True)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    async def _metrics(self, request: web.Request) -> web.Response:
        lines = ["# HELP epp_sidecar_requests_total Requests by what the sidecar did with them.",
                 "# TYPE epp_sidecar_requests_total counter"]
        for what in ("prefill_decode", "decode_only", "prefill_fallback", "prefill_rejected", "ssrf_denied",
                     "bad_request", "proxied", "client_disconnects"):
            lines.append(f'epp_sidecar_requests_total{{outcome="{what}"}} {self.stats[what]}')
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def stop(self) -> None:
        """Stops listening; in-flight requests get the grace period to finish."""
        for runner in self.runners:
            await runner.cleanup()
        self.runners.clear()
        for t in self._tasks:
            t.cancel()
        await self.allowlist.stop()
        if self.session is not None:
            await self.session.close()
