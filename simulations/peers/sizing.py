"""Which profiles a sized request may take, and the profiles each peer offers on a GPU model.

A sized request (`SizedRequest`: at least this memory and these compute slices) is covered by a profile with at
least as much of both. The peers offer plain profiles only: HAMi maps a profile to NVML by its slice count alone,
so `+me` variants cannot be asked for (spec dynamic-mig-peers §2), and a DRA capacity selector never reaches them
first, since on every catalog model the plain profile sorts before its `+me` twin at the same placements.
"""

from __future__ import annotations

from functools import cache

from simulations.twin.state import SizedRequest
from solver.catalog import GpuModel, Profile
from solver.profiles import parse_profile


def covers(profile: Profile, request: SizedRequest) -> bool:
    return profile.memory_mib >= request.memory_mib and profile.compute_slices >= request.compute_slices


@cache
def plain_profiles(model: GpuModel) -> tuple[Profile, ...]:
    """The model's profiles without attributes (no `+me`, `-me`, `+gfx`), in catalog order."""
    return tuple(p for p in model.profiles if not parse_profile(p.name).attributes)


@cache
def ladder(model: GpuModel) -> tuple[Profile, ...]:
    """One plain profile per compute-slice count, the one with least memory, smallest first."""
    best: dict[int, Profile] = {}
    for profile in plain_profiles(model):
        kept = best.get(profile.compute_slices)
        if kept is None or profile.memory_mib < kept.memory_mib:
            best[profile.compute_slices] = profile
    return tuple(best[size] for size in sorted(best))


@cache
def hami_chart_allowlist(model: GpuModel) -> tuple[Profile, ...]:
    """HAMi's chart lists, for H100-80GB, `1g.10gb, 2g.20gb, 3g.40gb, 7g.80gb` and, for H200, `1g.18gb, 2g.35gb,
    3g.71gb, 7g.141gb` (Project-HAMi/HAMi `charts/hami/templates/scheduler/device-configmap.yaml@4707fb02c91c`,
    v2.10.0): the least-memory 1g, 2g and 3g profiles and the whole GPU. The same pattern on every model (A30: 1g,
    2g and its 4g whole GPU)."""
    whole = model.compute_slices
    return tuple(p for p in ladder(model) if p.compute_slices in (1, 2, 3, whole))
