"""How the driver places GPU instances created without a placement, and how mig-parted orders the creations.

mig-parted creates every instance of a map without giving a placement, so the driver chooses (spec §4.5), and
success depends on the creation order; mig-parted therefore sorts the map biggest first and tries distinct
permutations until one succeeds (spec §2.4). The twin reproduces both so that a map that works on paper but
not in the creation order mig-parted uses behaves as it would on a node.

The placement rule is the spec's derived one (unverified on hardware, so it lives here only): among the free
allowed placements of the profile, take the one whose occupation removes the fewest still-possible placements
of all the GPU's profiles; ties go to the lowest start.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from solver.catalog import GpuModel, Profile
from solver.geometry import Instance
from solver.profiles import parse_profile

INSUFFICIENT_RESOURCES = "Insufficient Resources"
ALL_ORDERINGS_FAILED = "error attempting multiple config orderings: all orderings failed"


def _mask(start: int, size: int) -> int:
    return ((1 << size) - 1) << start


def _used_mask(model: GpuModel, layout: Sequence[Instance]) -> int:
    used = 0
    for inst in layout:
        used |= _mask(inst.start, model.profile(inst.profile).memory_slices)
    return used


def auto_place(model: GpuModel, layout: Sequence[Instance], profile: str) -> int | None:
    """The start the driver picks for a new instance of `profile` next to `layout`, or None (Insufficient Resources)."""
    wanted = model.profile(profile)
    if sum(1 for i in layout if model.profile(i.profile).name == wanted.name) >= wanted.max_count:
        return None
    compute = sum(model.profile(i.profile).compute_slices for i in layout)
    if compute + wanted.compute_slices > model.compute_slices:
        return None
    used = _used_mask(model, layout)
    possible = [
        _mask(s, p.memory_slices) for p in model.profiles for s in p.starts if not used & _mask(s, p.memory_slices)
    ]
    best: tuple[int, int] | None = None
    for start in wanted.starts:
        taken = _mask(start, wanted.memory_slices)
        if used & taken:
            continue
        removed = sum(1 for m in possible if m & taken)
        if best is None or removed < best[0]:
            best = (removed, start)
    return None if best is None else best[1]


def creation_order(model: GpuModel, devices: dict[str, int]) -> list[Profile]:
    """mig-parted's first ordering: G descending, then C descending, then the attribute string."""

    def key(p: Profile) -> tuple[int, int, str]:
        parsed = parse_profile(p.name)
        return (-parsed.gpu_slices, -parsed.compute_slices, ",".join(parsed.attributes))

    expanded = [model.profile(name) for name, count in devices.items() for _ in range(count)]
    return sorted(expanded, key=key)


def distinct_permutations(items: list[Profile]) -> Iterator[list[Profile]]:
    """Every distinct ordering, starting with `items` as given (duplicates skipped, as mig-parted's recursion does)."""

    def walk(prefix: list[Profile], rest: list[Profile]) -> Iterator[list[Profile]]:
        if not rest:
            yield list(prefix)
            return
        seen: set[str] = set()
        for i, item in enumerate(rest):
            if item.name in seen:
                continue
            seen.add(item.name)
            yield from walk([*prefix, item], rest[:i] + rest[i + 1 :])

    yield from walk([], items)


def create_in_order(model: GpuModel, order: Sequence[Profile]) -> tuple[list[Instance] | None, str | None]:
    """Create the instances one by one where the driver puts them; the failing profile's error if any."""
    layout: list[Instance] = []
    for profile in order:
        start = auto_place(model, layout, profile.name)
        if start is None:
            return None, f"Error creating GPU instance for '{profile.name}': {INSUFFICIENT_RESOURCES}"
        layout.append(Instance(profile=profile.name, start=start))
    return layout, None


def apply_map(
    model: GpuModel, devices: dict[str, int], max_orderings: int = 5040
) -> tuple[list[Instance] | None, list[str]]:
    """mig-parted's apply on a cleared GPU: try orderings until one creates everything.

    Returns the layout (None when every ordering failed) and the log lines a node would print.
    """
    log: list[str] = []
    for n, order in enumerate(distinct_permutations(creation_order(model, devices))):
        if n >= max_orderings:
            break
        layout, error = create_in_order(model, order)
        if layout is not None:
            return sorted(layout, key=lambda i: i.start), log
        log.append(error or "")
    log.append(ALL_ORDERINGS_FAILED)
    return None, log
