"""What any policy decides, in concrete terms, before it is turned into a `Plan`.

Both the optimal policy (after disaggregation) and the greedy baseline produce `Decisions`; `assemble` then
derives evictions, objective terms and explanations the same way for both, so their plans compare fairly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from solver.catalog import load_catalog
from solver.demand import single_key
from solver.geometry import find_layout
from solver.snapshot import GpuState, NodeState

GpuRef = tuple[str, int]  # (node name, GPU index)


@dataclass(frozen=True)
class Device:
    """One free MIG device a pod can be given: where it is, its profile and placement start."""

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

    For a reconfigured GPU the starts are those of one feasible layout; the driver picks the real placement.
    """
    if target is None:
        instances = [(gpu.gpu_model.profile(i.profile).name, i.start) for i in gpu.instances if not i.pod]
    else:
        instances = list(target_layout(gpu.gpu_model.key, tuple(sorted(target.items()))))
    return [Device(node=node.name, gpu=gpu.index, profile=p, start=s) for p, s in sorted(instances, key=lambda x: x[1])]


@cache
def target_layout(model_key: str, target: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    """The layout a target map gets (the same every time: plans are deterministic); computed once per map."""
    layout = find_layout(load_catalog().model(model_key), dict(target))
    if layout is None:
        raise ValueError(f"target {dict(target)} is not feasible on {model_key}")
    return tuple((i.profile, i.start) for i in layout)


def resource_key(node: NodeState, gpu: GpuState, profile: str) -> str:
    """The resource key (see `solver.demand`) under which this node advertises a device of `profile`."""
    return profile if node.strategy == "mixed" else single_key(gpu.gpu_model.key, profile)
