"""destination-endpoint-served-verifier (conformance): puts on the response, as
x-conformance-test-served-endpoint, the endpoint the proxy reports it served the request from
(envoy.lb x-gateway-destination-endpoint-served), or why it cannot."""
from __future__ import annotations

from ...headers import CONFORMANCE_SERVED
from ..framework import Plugin, ResponseHeaders, register
from ..types import SERVED_ATTR


@register
class DestinationEndpointServedVerifier(Plugin, ResponseHeaders):
    type_name = "destination-endpoint-served-verifier"

    def response_headers(self, request, result, status):
        served = request.attrs.get(SERVED_ATTR) if request.attrs else None
        if served is None:
            return [(CONFORMANCE_SERVED, "fail: missing envoy lb metadata")]
        if not served:
            return [(CONFORMANCE_SERVED, "fail: missing destination endpoint served metadata")]
        return [(CONFORMANCE_SERVED, served)]
