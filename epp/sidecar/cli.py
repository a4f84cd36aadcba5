"""`epp-sidecar` console script."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys

from . import options
from .options import build_parser

__all__ = ["main", "build_parser"]    # build_parser: the manifest tests parse the decode pods' args


async def serve(cfg: options.Config) -> int:
    from .server import SidecarServer
    server = SidecarServer(cfg)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("epp.sidecar").info("shutting down (in-flight requests get %.0fs)", cfg.shutdown_grace_period)
    await server.stop()
    return 0


def _runner():
    """uvloop's when it is there, unless EPP_EVENT_LOOP names another loop (as for epp)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run if os.environ.get("EPP_EVENT_LOOP", "uvloop") == "uvloop" else asyncio.run


def main(argv: list[str] | None = None) -> int:
    cfg = options.parse(argv)
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    log = logging.getLogger("epp.sidecar")
    log.info("configuration: %s; environment: %s", cfg, options.env_summary())
    if cfg.extra.get("tracing"):
        log.warning("--tracing is accepted but not implemented: no spans are exported")
    from ..datalayer.file_source import EndpointsFileError
    try:
        return _runner()(serve(cfg))
    except (EndpointsFileError, OSError, ssl.SSLError) as e:
        log.error("cannot start: %s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
