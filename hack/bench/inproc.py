"""epp's decisions per second on one core without any transport: its RequestStream fed serialized
ext_proc messages in process (imports epp's internals: the figure moves with them)."""
from __future__ import annotations

import math
import random
import time

from .openloop import Payload

perf = time.perf_counter


def micro_decisions(n_endpoints: int, size: int, seconds: float, profile: bool = False) -> dict:
    """RequestStream fed serialized ProcessingRequests for whole FULL_DUPLEX requests (headers, body
    in 16 KiB messages, response headers, response body); the responses serialized. Counts only
    this work (not building the inputs): requests per second of one core, without the HTTP/2
    transport and without Envoy."""
    import cProfile
    import pstats
    import io

    from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
    from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    from epp.datalayer.endpoint import Endpoint, Metrics, now
    from epp.datalayer.store import EndpointStore
    from epp.metrics import EPPMetrics
    from epp.requestcontrol.director import Director
    from epp.scheduling.scheduler import default_scheduler
    from epp.server.stream import RequestStream

    store = EndpointStore()
    rnd = random.Random(1)
    eps = [Endpoint(name=f"pod-{i}", address=f"127.0.0.1:{20000 + i}") for i in range(n_endpoints)]
    for ep in eps:
        ep.metrics = Metrics(waiting=rnd.randint(0, 3), running=rnd.randint(0, 8), kv_usage=rnd.random() * 0.5,
                             block_size=16, num_gpu_blocks=1000, updated=now())
    store.replace(eps)
    global _MICRO_METRICS
    try:
        metrics = _MICRO_METRICS
    except NameError:
        metrics = _MICRO_METRICS = EPPMetrics()
    director = Director(store, default_scheduler(metrics, 1), metrics, staleness=3600.0)
    FD = ProcessingMode.FULL_DUPLEX_STREAMED
    hdrs = [(":method", "POST"), (":path", "/v1/completions"), (":authority", "bench"), (":scheme", "http"),
            ("content-type", "application/json"), ("content-length", str(size)), ("x-request-id", "r"),
            ("user-agent", "bench")]
    head_msg = pb.ProcessingRequest(request_headers=pb.HttpHeaders(
        headers=HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in hdrs])))
    head_msg.protocol_config.request_body_mode = FD
    head_msg.protocol_config.response_body_mode = FD
    head_bytes = head_msg.SerializeToString()
    resp_head = pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=HeaderMap(headers=[
        HeaderValue(key=":status", raw_value=b"200"), HeaderValue(key="content-type", raw_value=b"application/json")]))
    ).SerializeToString()
    resp_body = pb.ProcessingRequest(response_body=pb.HttpBody(
        body=b'{"choices":[{"text":"x"}],"usage":{"prompt_tokens":10,"completion_tokens":1,"total_tokens":11}}',
        end_of_stream=True)).SerializeToString()
    payload = Payload(size)
    CH = 16384
    frm = pb.ProcessingRequest.FromString
    busy = 0.0
    n = 0
    prof = cProfile.Profile() if profile else None
    deadline = perf() + seconds
    while perf() < deadline:
        body = b"".join(payload.parts()[1:])
        msgs = [head_bytes]
        for off in range(0, len(body), CH):
            msgs.append(pb.ProcessingRequest(request_body=pb.HttpBody(
                body=body[off:off + CH], end_of_stream=off + CH >= len(body))).SerializeToString())
        msgs += [resp_head, resp_body]
        if prof:
            prof.enable()
        t0 = perf()
        s = RequestStream(director, 1 << 27)
        out = 0
        for m in msgs:
            for r in s.on_message(frm(m)):
                out += len(r.SerializeToString())
        s.close()
        busy += perf() - t0
        if prof:
            prof.disable()
        n += 1
        if n % 500 == 0:
            t = now()
            for ep in eps:
                ep.metrics.updated = t
    res = {"endpoints": n_endpoints, "size_kb": size // 1024, "requests": n, "busy_s": busy,
           "decisions_per_s": n / busy if busy else math.nan, "us_per_request": busy / n * 1e6 if n else math.nan}
    if prof:
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats("tottime").print_stats(14)
        res["profile_tottime"] = buf.getvalue()
    return res
