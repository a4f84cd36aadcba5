"""Builders for ext_proc messages and a director over a fixed pool, for state-machine tests."""
from __future__ import annotations

import random

from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf.struct_pb2 import Struct

from epp.datalayer.endpoint import Endpoint, Metrics, now
from epp.datalayer.store import EndpointStore
from epp.metrics import EPPMetrics
from epp.requestcontrol.director import Director
from epp.scheduling.plugins.kv_cache_utilization_scorer import KVCacheUtilizationScorer
from epp.scheduling.plugins.max_score_picker import MaxScorePicker
from epp.scheduling.plugins.prefix_cache_scorer import PrefixCacheScorer
from epp.scheduling.plugins.queue_scorer import QueueScorer
from epp.scheduling.profile import Profile, WeightedScorer
from epp.scheduling.scheduler import Scheduler
from epp import headers as H
from epp.server import protocol as p
from prometheus_client import CollectorRegistry


def endpoint(i: int, waiting: float = 0, kv: float = 0.0, fresh: bool = True, **labels) -> Endpoint:
    ep = Endpoint(name=f"pod-{i}", address=f"10.0.0.{i}:8000", labels=dict(labels))
    ep.metrics = Metrics(waiting=waiting, kv_usage=kv, updated=now() if fresh else 0.0)
    return ep


def director(endpoints: list[Endpoint], max_endpoints: int = 1, explain: bool = False,
             objectives: dict | None = None, seed: int = 1, extra_plugins=()) -> Director:
    store = EndpointStore()
    store.replace(endpoints)
    profile = Profile(name="default", picker=MaxScorePicker(maxNumOfEndpoints=max_endpoints, rng=random.Random(seed)),
                      scorers=[WeightedScorer(QueueScorer(), 2), WeightedScorer(KVCacheUtilizationScorer(), 2),
                               WeightedScorer(PrefixCacheScorer(), 3)])
    metrics = EPPMetrics(CollectorRegistry())
    return Director(store, Scheduler([profile], metrics, extra_plugins=extra_plugins), metrics, objectives=objectives,
                    explain=explain)


def req_headers(path: str = "/v1/completions", method: str = "POST", eos: bool = False, mode: int | None = p.FULL_DUPLEX,
                resp_mode: int | None = None, early: bool = False, extra: dict | None = None,
                subset=None) -> pb.ProcessingRequest:
    hs = {":method": method, ":path": path, ":authority": "gw", "content-type": "application/json", **(extra or {})}
    msg = pb.ProcessingRequest(request_headers=pb.HttpHeaders(
        headers=HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in hs.items()]),
        end_of_stream=eos))
    if mode is not None:
        msg.protocol_config.request_body_mode = mode
        msg.protocol_config.response_body_mode = resp_mode if resp_mode is not None else mode
        msg.protocol_config.send_body_without_waiting_for_header_response = early
    if subset is not None:
        s = Struct()
        s.update({H.SUBSET_KEY: subset})
        msg.metadata_context.filter_metadata[H.SUBSET_NS].CopyFrom(s)
    return msg


def req_body(data: bytes, eos: bool = True) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=eos))


def resp_headers(status: int = 200, ctype: str = "application/json", eos: bool = False) -> pb.ProcessingRequest:
    hs = {":status": str(status), "content-type": ctype}
    return pb.ProcessingRequest(response_headers=pb.HttpHeaders(
        headers=HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in hs.items()]), end_of_stream=eos))


def resp_body(data: bytes, eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=eos))


def set_headers(c: pb.CommonResponse) -> dict[str, str]:
    return {o.header.key: o.header.raw_value.decode() for o in c.header_mutation.set_headers}


def kind(r: pb.ProcessingResponse) -> str:
    return r.WhichOneof("response")
