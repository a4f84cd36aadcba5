"""data-parallel-profile-handler (deprecated upstream: single-profile-handler with Istio >= 1.28.1):
one profile; the request is sent to the picked pod's primaryPort (8000) and the picked rank endpoint
"ip:port" travels in x-data-parallel-host-port for the pod's sidecar to forward to."""
from __future__ import annotations

from ...datalayer.address import host_port
from ...headers import DATA_PARALLEL
from ..framework import PreRequest, ProfileHandler, need_int, params_error, register
from ..types import SchedulingResult


@register
class DataParallelProfileHandler(ProfileHandler, PreRequest):
    type_name = "data-parallel-profile-handler"
    replaced_by = "single-profile-handler"

    def __init__(self, name: str | None = None, primaryPort: int = 8000) -> None:
        super().__init__(name)
        self.port = need_int(self.type_name, "primaryPort", primaryPort, 1)
        if self.port > 65535:
            raise params_error(self.type_name, f"primaryPort {primaryPort} must be 1-65535")

    def validate(self, profiles) -> None:
        if len(profiles) != 1:
            raise ValueError(f"{self.type_name} needs exactly one scheduling profile, got {len(profiles)}")

    def pick_profiles(self, state, request, profiles, results):
        return [] if results else list(profiles.values())

    def process_results(self, state, request, results):
        (name, pr), = results.items()
        result = SchedulingResult(profiles=results, primary=name)
        if pr.targets:
            # the proxy goes to the pod's primary port; the rank endpoint rides in the header. The pick
            # itself stays the rank endpoint (what the prefix index and in-flight counts are kept for).
            result.destination = host_port(pr.targets[0].ip, self.port)
        return result

    def pre_request(self, state, request, result):
        targets = result.targets
        return [(DATA_PARALLEL, targets[0].address)] if targets else None
