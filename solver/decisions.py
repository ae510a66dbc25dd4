"""What any policy decides, in concrete terms, before it is turned into a `Plan`.

Both the optimal policy (after disaggregation) and the greedy baseline produce `Decisions`; `assemble` then
derives evictions, objective terms and explanations the same way for both, so their plans compare fairly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import NamedTuple

from solver.catalog import load_catalog
from solver.demand import single_key
from solver.geometry import find_layout
from solver.snapshot import GpuState, NodeState

GpuRef = tuple[str, int]  # (node name, GPU index)


class Device(NamedTuple):
    """One free MIG device a pod can be given: where it is, its profile and placement start. A named tuple: plans
    of thousands of GPUs make hundreds of thousands of them, and a tuple is made in half a frozen dataclass's time."""

    node: str
    gpu: int
    profile: str
    start: int


@dataclass
class Decisions:
    """Target maps of the GPUs that change, and the devices each placed pod gets."""

    targets: dict[GpuRef, dict[str, int]] = field(default_factory=dict)
    placements: dict[str, list[Device]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def free_devices(node: NodeState, gpu: GpuState, target: dict[str, int] | None) -> list[Device]:
    """The devices of one GPU a pending pod could be given: its free instances if kept, all of the target's if not.

    A target equal to the current map keeps the GPU (mig-parted skips it, spec §2.4), so its held instances stay
    held. For a reconfigured GPU the starts are those of one feasible layout; the driver picks the real placement.
    """
    if target is None or target == gpu.mig_devices:
        instances = gpu.free_instances  # already in start order
    else:
        instances = tuple(sorted(target_layout(gpu.gpu_model.key, tuple(sorted(target.items()))), key=lambda x: x[1]))
    name, index = node.name, gpu.index
    return [Device(name, index, p, s) for p, s in instances]


@cache
def target_layout(model_key: str, target: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    """The layout a target map gets (the same every time: plans are deterministic); computed once per map."""
    layout = find_layout(load_catalog().model(model_key), dict(target))
    if layout is None:
        raise ValueError(f"target {dict(target)} is not feasible on {model_key}")
    return tuple((i.profile, i.start) for i in layout)


def profiles_after(gpu: GpuState, target: dict[str, int] | None) -> set[str]:
    """The profiles the GPU holds once the plan is carried out: the target's if it has one, else its current ones."""
    devices = gpu.mig_devices if target is None else target
    return {name for name, count in devices.items() if count}


def single_profile(node: NodeState, targets: Mapping[GpuRef, dict[str, int]]) -> str | None:
    """The one profile every GPU of a single-strategy node holds after the plan; None when the node would not
    advertise any device: several profiles or models, or a GPU with MIG enabled and nothing created (the device
    plugin then labels the node MIG-INVALID with `gpu.count=0`, spec §1.10)."""
    profiles: set[str] = set()
    for gpu in node.gpus:
        held = profiles_after(gpu, targets.get((node.name, gpu.index)))
        if not held:
            return None
        profiles |= held
    if len(profiles) != 1 or len({g.gpu_model.key for g in node.gpus}) != 1:
        return None
    return profiles.pop()


def advertises_nothing(node: NodeState, targets: Mapping[GpuRef, dict[str, int]]) -> bool:
    """Whether the node would advertise no MIG device after the plan: a single-strategy node not holding one
    profile on every GPU (`single_profile`); a mixed-strategy node advertises each of its devices."""
    return node.strategy == "single" and single_profile(node, targets) is None


def resource_key(node: NodeState, gpu: GpuState, profile: str) -> str:
    """The resource key (see `solver.demand`) under which this node advertises a device of `profile`."""
    return profile if node.strategy == "mixed" else single_key(gpu.gpu_model.key, profile)
