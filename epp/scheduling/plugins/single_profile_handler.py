"""single-profile-handler: runs the one profile; its pick is the result."""
from __future__ import annotations

from ..framework import ProfileHandler, register
from ..types import SchedulingResult


@register
class SingleProfileHandler(ProfileHandler):
    type_name = "single-profile-handler"

    def validate(self, profiles) -> None:
        if len(profiles) != 1:
            raise ValueError(f"{self.type_name} needs exactly one scheduling profile, got {len(profiles)}: "
                             f"{sorted(profiles)}; configure a profile handler that chooses between them")

    def pick_profiles(self, state, request, profiles, results):
        return [] if results else list(profiles.values())

    def process_results(self, state, request, results):
        (name, _), = results.items()
        return SchedulingResult(profiles=results, primary=name)
