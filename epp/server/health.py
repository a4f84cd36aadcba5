"""gRPC health (grpc.health.v1) as upstream's EPP answers it, on its own plaintext port.

Without leader election every service name, known or not, reports one state: SERVING once discovery
has delivered the pool and while not draining (upstream's charts probe the name "inference-extension";
a NOT_FOUND there would keep the pod unready and let the liveness probe kill it).
With leader election: "", "readiness" and the ext_proc service name follow ready-and-leader; "liveness"
is always SERVING (a standby or a draining replica must not be restarted); any other name is
SERVICE_UNKNOWN. Watch is UNIMPLEMENTED, as upstream.
"""
from __future__ import annotations

from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
READINESS_NAMES = ("", "readiness", EXT_PROC_SERVICE)


class Health(health_pb2_grpc.HealthServicer):
    def __init__(self, synced: Callable[[], bool], leader: Callable[[], bool] = lambda: True,
                 leader_election: bool = False) -> None:
        self.synced = synced                 # discovery delivered the pool
        self.leader = leader
        self.leader_election = leader_election
        self.draining = False                # SIGTERM received

    def add_to(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self, server)

    def status(self, service: str) -> int:
        ok = self.synced() and not self.draining
        if not self.leader_election:
            return SERVING if ok else NOT_SERVING
        if service == "liveness":
            return SERVING
        if service in READINESS_NAMES:
            return SERVING if ok and self.leader() else NOT_SERVING
        return SERVICE_UNKNOWN

    @property
    def ready(self) -> bool:
        return self.status("readiness") == SERVING

    async def Check(self, request, context):
        return health_pb2.HealthCheckResponse(status=self.status(request.service))

    async def List(self, request, context):
        names = [EXT_PROC_SERVICE] + (["liveness", "readiness"] if self.leader_election else [])
        return health_pb2.HealthListResponse(statuses={n: health_pb2.HealthCheckResponse(status=self.status(n))
                                                       for n in names})

    async def Watch(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Watch is not implemented")



async def ext_proc_port_health(server: grpc.aio.Server) -> None:
    """--health-checking: the stock health service on the ext_proc port, the ext_proc name SERVING."""
    from grpc_health.v1 import health
    stock = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(stock, server)
    await stock.set(EXT_PROC_SERVICE, SERVING)
    await stock.set("", SERVING)
