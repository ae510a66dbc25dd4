"""Exact MIG geometry: which layouts and which `mig-devices` maps a GPU model can hold.

A layout is a set of (profile, start) instances. It is feasible when every start is one the profile allows,
no two instances share a memory slice, compute slices stay within the GPU's and counts within each profile's
maximum. A map (`{profile: count}`, what a mig-parted config can express) is feasible when some layout
realises it. Everything here is a small exact search over the GPU's 8 (or 4) memory slices.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cache
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from solver.catalog import GpuModel, Profile
from solver.errors import MigoptError

MigDevices = dict[str, int]
"""A `mig-devices` map: profile name → count (zero counts are not stored)."""


class Instance(BaseModel):
    """One GPU instance of a layout: its profile and placement start."""

    model_config = ConfigDict(frozen=True)

    profile: str
    start: int


def size_order(model: GpuModel) -> tuple[Profile, ...]:
    """Profiles biggest first (compute, then memory, then name): the order maps are printed and solved in."""
    return tuple(sorted(model.profiles, key=lambda p: (-p.compute_slices, -p.memory_slices, p.name)))


def normalise_map(model: GpuModel, devices: Mapping[str, int]) -> MigDevices:
    """Resolve names (drift included), merge duplicates, drop zeros, order biggest first; reject bad counts."""
    counts: Counter[str] = Counter()
    for name, count in devices.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise MigoptError(f"count for {name!r} must be a non-negative integer, got {count!r}")
        counts[model.profile(name).name] += count
    return {p.name: counts[p.name] for p in size_order(model) if counts[p.name] > 0}


class Placed(Protocol):
    """An instance as `check_layout` reads it: a profile name (drifted names resolve) and a start."""

    @property
    def profile(self) -> str: ...

    @property
    def start(self) -> int: ...


def check_layout(model: GpuModel, instances: Iterable[Placed]) -> list[str]:
    """Every reason the layout is not feasible on this model (empty when it is)."""
    problems: list[str] = []
    used = 0
    compute = 0
    counts: Counter[str] = Counter()
    for inst in instances:
        profile = model.profile(inst.profile)
        if inst.start not in profile.starts:
            problems.append(
                f"{profile.name} cannot start at memory slice {inst.start} (allowed: {list(profile.starts)})"
            )
            continue
        mask = ((1 << profile.memory_slices) - 1) << inst.start
        if used & mask:
            problems.append(f"{profile.name}@{inst.start} overlaps another instance's memory slices")
        used |= mask
        compute += profile.compute_slices
        counts[profile.name] += 1
    if compute > model.compute_slices:
        problems.append(f"uses {compute} compute slices, {model.key} has {model.compute_slices}")
    for name, count in counts.items():
        limit = model.profile(name).max_count
        if count > limit:
            problems.append(f"{count}x {name} exceeds the maximum of {limit}")
    return problems


def _map_bounds_problem(model: GpuModel, devices: MigDevices) -> str | None:
    for name, count in devices.items():
        profile = model.profile(name)
        if count > profile.max_count:
            return f"{count}x {name} exceeds the maximum of {profile.max_count}"
    compute = sum(model.profile(n).compute_slices * c for n, c in devices.items())
    if compute > model.compute_slices:
        return f"needs {compute} compute slices, {model.key} has {model.compute_slices}"
    memory = sum(model.profile(n).memory_slices * c for n, c in devices.items())
    if memory > model.memory_slices:
        return f"needs {memory} memory slices, {model.key} has {model.memory_slices}"
    return None


def _search(
    model: GpuModel, pending: Sequence[Profile], used: int, after: int, found: list[tuple[Profile, int]]
) -> Iterator[list[tuple[Profile, int]]]:
    """Yield every way to place `pending` (biggest first) on free slices; equal profiles take rising starts."""
    if not pending:
        yield list(found)
        return
    profile, rest = pending[0], pending[1:]
    for start in profile.starts:
        if start < after:
            continue
        mask = ((1 << profile.memory_slices) - 1) << start
        if used & mask:
            continue
        found.append((profile, start))
        next_after = start + 1 if rest and rest[0] is profile else -1
        yield from _search(model, rest, used | mask, next_after, found)
        found.pop()


def _expand(model: GpuModel, devices: MigDevices) -> list[Profile]:
    return [p for p in size_order(model) for _ in range(devices.get(p.name, 0))]


def _layouts(model: GpuModel, devices: Mapping[str, int], keep: Iterable[Instance]) -> Iterator[list[Instance]]:
    """Every layout realising the map with the `keep` instances where they are, lazily, in search order."""
    target = normalise_map(model, devices)
    kept = [Instance(profile=model.profile(i.profile).name, start=i.start) for i in keep]
    if check_layout(model, kept) or _map_bounds_problem(model, target):
        return
    remaining = Counter(target)
    used = 0
    for inst in kept:
        profile = model.profile(inst.profile)
        remaining[profile.name] -= 1
        used |= ((1 << profile.memory_slices) - 1) << inst.start
    if any(c < 0 for c in remaining.values()):
        return
    for layout in _search(model, _expand(model, dict(remaining)), used, -1, []):
        placed = kept + [Instance(profile=p.name, start=s) for p, s in layout]
        yield sorted(placed, key=lambda i: (i.start, i.profile))


def layouts_for_map(model: GpuModel, devices: Mapping[str, int], keep: Iterable[Instance] = ()) -> list[list[Instance]]:
    """Every layout that realises the map, optionally containing the `keep` instances where they are."""
    return list(_layouts(model, devices, keep))


def find_layout(model: GpuModel, devices: Mapping[str, int], keep: Iterable[Instance] = ()) -> list[Instance] | None:
    """One layout realising the map (keeping `keep` in place), or None."""
    return next(_layouts(model, devices, keep), None)


def explain_map(model: GpuModel, devices: Mapping[str, int]) -> str | None:
    """Why the map cannot be created on this model, or None when some placement realises it."""
    target = normalise_map(model, devices)
    problem = _map_bounds_problem(model, target)
    if problem:
        return problem
    if find_layout(model, target) is None:
        return "no non-overlapping placement of these instances exists"
    return None


def can_create_keeping(model: GpuModel, devices: Mapping[str, int], keep: Iterable[Instance]) -> bool:
    """Whether the target map can be realised while the `keep` instances stay where they are."""
    return find_layout(model, devices, keep) is not None


def _key(devices: MigDevices) -> tuple[tuple[str, int], ...]:
    return tuple(devices.items())


@cache
def _all_maps(model: GpuModel, profiles: tuple[str, ...]) -> tuple[tuple[tuple[str, int], ...], ...]:
    allowed = [p for p in size_order(model) if p.name in profiles]
    options = [(p, s, ((1 << p.memory_slices) - 1) << s) for p in allowed for s in p.starts]
    seen: set[tuple[tuple[str, int], ...]] = set()

    def walk(index: int, used: int, compute: int, counts: Counter[str]) -> None:
        seen.add(_key({p.name: counts[p.name] for p in allowed if counts[p.name]}))
        for j in range(index, len(options)):
            profile, _, mask = options[j]
            if used & mask or counts[profile.name] >= profile.max_count:
                continue
            if compute + profile.compute_slices > model.compute_slices:
                continue
            counts[profile.name] += 1
            walk(j + 1, used | mask, compute + profile.compute_slices, counts)
            counts[profile.name] -= 1

    walk(0, 0, 0, Counter())
    seen.discard(())
    rank = {p.name: i for i, p in enumerate(allowed)}

    def order(key: tuple[tuple[str, int], ...]) -> tuple[int, list[tuple[int, int]]]:
        used_compute = sum(model.profile(n).compute_slices * c for n, c in key)
        return (-used_compute, [(rank[n], -c) for n, c in key])

    return tuple(sorted(seen, key=order))


def feasible_maps(model: GpuModel, profiles: Iterable[str] | None = None) -> list[MigDevices]:
    """Every non-empty feasible map of the model, restricted to `profiles` when given (most compute first)."""
    names = tuple(sorted(model.profile(n).name for n in profiles)) if profiles is not None else model.profile_names
    return [dict(key) for key in _all_maps(model, tuple(sorted(names)))]


def max_alone(model: GpuModel, profile: str) -> int:
    """The most instances of one profile a GPU holds with nothing else (what `all-<profile>` configs use)."""
    name = model.profile(profile).name
    return max(m[name] for m in feasible_maps(model, [name]))


def maximal_maps(model: GpuModel, profiles: Iterable[str] | None = None) -> list[MigDevices]:
    """Feasible maps to which no further instance of an allowed profile can be added."""
    maps = feasible_maps(model, profiles)
    keys = {_key(m) for m in maps}
    allowed = {n for m in maps for n in m} if profiles is None else {model.profile(n).name for n in profiles}
    order = [p.name for p in size_order(model)]

    def grown(devices: MigDevices, name: str) -> tuple[tuple[str, int], ...]:
        bigger = dict(devices)
        bigger[name] = bigger.get(name, 0) + 1
        return tuple((n, bigger[n]) for n in order if bigger.get(n))

    return [m for m in maps if not any(grown(m, n) in keys for n in allowed)]


def maximal_layouts(model: GpuModel, profiles: Iterable[str] | None = None) -> list[list[Instance]]:
    """Layouts to which no instance of an allowed profile can be added where it stands (spec §4.4's count)."""
    names = {model.profile(n).name for n in profiles} if profiles is not None else set(model.profile_names)
    allowed = [p for p in size_order(model) if p.name in names]
    options = [(p, s, ((1 << p.memory_slices) - 1) << s) for p in allowed for s in p.starts]
    result: list[list[Instance]] = []

    def fits(option: tuple[Profile, int, int], used: int, compute: int, counts: Counter[str]) -> bool:
        profile, _, mask = option
        return (
            not used & mask
            and counts[profile.name] < profile.max_count
            and compute + profile.compute_slices <= model.compute_slices
        )

    def walk(index: int, used: int, compute: int, counts: Counter[str], chosen: list[Instance]) -> None:
        if not any(fits(o, used, compute, counts) for o in options):
            result.append(sorted(chosen, key=lambda i: (i.start, i.profile)))
        for j in range(index, len(options)):
            if not fits(options[j], used, compute, counts):
                continue
            profile, start, mask = options[j]
            counts[profile.name] += 1
            chosen.append(Instance(profile=profile.name, start=start))
            walk(j + 1, used | mask, compute + profile.compute_slices, counts, chosen)
            chosen.pop()
            counts[profile.name] -= 1

    walk(0, 0, 0, Counter(), [])
    return result
