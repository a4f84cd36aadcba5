"""gRPC health checks against epp's health port, as a kubelet probe makes them."""
from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def health(port: int, service: str) -> str:
    """The serving status for `service` (SERVING, NOT_SERVING, ...) or the RPC's error code name."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        except grpc.RpcError as e:
            return e.code().name
