"""`epp` console script. Exit codes as upstream's: 2 for a flag it cannot parse (with usage), 1 for
anything that stops it from starting (flag validation, config, discovery)."""
from __future__ import annotations

import asyncio
import logging
import os
import sys

from . import flags, logs

log = logging.getLogger("setup")


def main(argv: list[str] | None = None) -> int:
    try:
        args = flags.parse(argv)
    except flags.FlagError as e:
        logs.setup()
        log.error("Failed to validate flags", exc_info=(type(e), e, None))
        return 1
    zap_level = args.zap_log_level if args.zap_log_level is not None else args.zap_level_from_v
    logs.setup(zap_level, args.zap_encoder, args.zap_time_encoding, args.zap_stacktrace_level)
    for notice in args.notices:
        log.warning(notice)
    log.info("Flags processed", extra={"kv": {"flags": flags.processed(args)}})
    from .datalayer.file_source import EndpointsFileError
    from .scheduling.config import ConfigError
    from .runner import serve
    runner = asyncio.run
    if os.environ.get("EPP_EVENT_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
            runner = uvloop.run
        except ImportError:
            pass
    try:
        return runner(serve(args))
    except (EndpointsFileError, ConfigError, OSError, ValueError) as e:
        log.error("cannot start: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
