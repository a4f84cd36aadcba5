"""`epp` console script."""
from __future__ import annotations

import asyncio
import logging
import os
import sys

from . import flags


def main(argv: list[str] | None = None) -> int:
    args = flags.parse(argv)
    logging.basicConfig(level=logging.DEBUG if args.v >= 4 else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
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
    except (EndpointsFileError, ConfigError, OSError) as e:
        logging.getLogger("epp").error("cannot start: %s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
