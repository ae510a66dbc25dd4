"""What a GPU's MIG instances take: memory slices (as a bit mask), compute slices and instances per profile.

One value answers "may this profile go at this start?" the way NVML does (no overlap, compute within the GPU, at
most the profile's maximum), for the twin's own instances and for a peer allocator's view of its grants alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from solver.catalog import GpuModel, Profile


def mask(profile: Profile, start: int) -> int:
    """The memory slices `profile` occupies at `start`."""
    return ((1 << profile.memory_slices) - 1) << start


@dataclass(frozen=True, slots=True)
class Occupancy:
    """Immutable: `plus` and `minus` return new values, so a caller may keep old ones as snapshots."""

    memory: int = 0
    compute: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Occupancy:
        return cls()

    def admits(self, model: GpuModel, profile: Profile, start: int) -> bool:
        """NVML would create `profile` at `start` next to what is taken (the start must be one of its placements)."""
        return (
            start in profile.starts
            and not self.memory & mask(profile, start)
            and self.compute + profile.compute_slices <= model.compute_slices
            and self.counts.get(profile.name, 0) < profile.max_count
        )

    def plus(self, profile: Profile, start: int) -> Occupancy:
        counts = dict(self.counts)
        counts[profile.name] = counts.get(profile.name, 0) + 1
        return Occupancy(self.memory | mask(profile, start), self.compute + profile.compute_slices, counts)

    def minus(self, profile: Profile, start: int) -> Occupancy:
        counts = dict(self.counts)
        counts[profile.name] -= 1
        if not counts[profile.name]:
            del counts[profile.name]
        return Occupancy(self.memory & ~mask(profile, start), self.compute - profile.compute_slices, counts)
