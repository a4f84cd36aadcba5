"""epp as a child process on loopback, the way the stack and the benchmarks run it."""
from __future__ import annotations

import os
import subprocess
import sys

from .children import Children
from .ports import free_port
from .wait import wait_port


def start_epp(kids: Children, efile: str, grpc_port: int, interval: str = "50ms",
              extra: list[str] | None = None, name: str = "epp", wrap: list[str] | None = None) -> subprocess.Popen:
    """The installed `epp` on efile, plain-text gRPC on grpc_port, health and metrics on free ports (a later
    flag in extra wins over these); returns once ext_proc accepts. wrap prefixes the command (a profiler)."""
    epp = os.path.join(os.path.dirname(sys.executable), "epp")
    cmd = [epp, "--endpoints-file", efile, "--grpc-port", str(grpc_port), "--grpc-health-port", str(free_port()),
           "--metrics-port", str(free_port()), "--secure-serving=false", "--bind-address", "127.0.0.1",
           "--refresh-metrics-interval", interval, *(extra or [])]
    p = kids.start(name, (wrap or []) + cmd)
    wait_port(grpc_port, 30, p, "epp")
    return p
