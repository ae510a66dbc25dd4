"""Independent checks that a plan is safe to act on. Run on every plan before it is returned, and by the tests.

A plan is valid when: every target is a feasible map of its GPU's model; a GPU that changes evicts exactly the
pods holding its instances and a GPU that stays evicts nobody; no protected pod is evicted; policy caps hold;
every placed pod gets exactly the devices it asked for, on one node that accepts it, from devices that exist
and are free after the plan, none given twice; capacity freed by evicting pods of priority P serves only
pods above P; a single-strategy node the plan changes or places pods on holds one profile on every GPU after
it (else the device plugin advertises nothing there, spec §1.10); and every pending pod is either placed or
explained.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from solver.catalog import load_catalog
from solver.checkpoint import Checkpoint, carry_on
from solver.decisions import GpuRef, advertises_nothing, profiles_after, resource_key, target_layout
from solver.demand import Demand, demands, rejection, weights_for
from solver.geometry import find_layout
from solver.plan import GpuPlan, PlanPolicy, PodPlacement, UnplacedPod
from solver.snapshot import ClusterSnapshot, GpuState, NodeState


class PlanLines(Protocol):
    """What the checks read of a plan: a `Plan`, or the body of one written ahead (`solver.assemble.Body`)."""

    @property
    def gpus(self) -> list[GpuPlan]: ...

    @property
    def placements(self) -> list[PodPlacement]: ...

    @property
    def unplaced(self) -> list[UnplacedPod]: ...


def plan_problems(
    snapshot: ClusterSnapshot,
    plan: PlanLines,
    policy: PlanPolicy,
    reading: SnapshotReading | None = None,
    checkpoint: Checkpoint = carry_on,
) -> list[str]:
    """Every way the plan breaks the rules above (empty when it is valid). `reading`: what the checks read of the
    snapshot whatever the plan (`read_snapshot`), when the caller had it made already (the optimal policy, while
    CP-SAT solves); `checkpoint` may abandon the checks between their steps (checks run ahead, on a plan that
    may not be the one returned)."""
    reading = read_snapshot(snapshot) if reading is None else reading
    problems: list[str] = []
    gpu_plans = {(g.node, g.index): g for g in plan.gpus}
    infeasible: set[GpuRef] = set()  # GPUs rebuilt to a map their model cannot hold: they offer no device
    tier: dict[GpuRef, int] = {}
    # snapshot order; a GPU that stays and evicts nobody has nothing to check
    for number, (ref, gpu) in enumerate(reading.gpus.items()):
        if number % _CHECKPOINT_GPUS == 0:
            checkpoint()
        gp = gpu_plans.get(ref)
        if gp is None:
            problems.append(f"{ref[0]}/{ref[1]}: missing from plan")
        elif gp.reconfigure or gp.evict:
            problems += _change_problems(snapshot, reading.nodes[ref[0]], gpu, gp, policy, tier, infeasible)
    evicted = {p for g in plan.gpus for p in g.evict}
    if policy.max_evictions is not None and len(evicted) > policy.max_evictions:
        problems.append(f"{len(evicted)} evictions exceed the cap of {policy.max_evictions}")
    reconfigured = sum(g.reconfigure for g in plan.gpus)
    if policy.max_reconfigurations is not None and reconfigured > policy.max_reconfigurations:
        problems.append(f"{reconfigured} reconfigurations exceed the cap of {policy.max_reconfigurations}")

    problems += _single_strategy_problems(reading, plan)
    free = _FreeDevices(reading.gpus, gpu_plans, infeasible)
    for number, placement in enumerate(plan.placements):
        if number % _CHECKPOINT_PLACEMENTS == 0:
            checkpoint()
        demand = reading.pending.get(placement.pod)
        problems += _placement_problems(placement, demand, reading.nodes, reading.gpus, gpu_plans, free, tier)
    placed = {p.pod for p in plan.placements}
    unplaced = {u.pod for u in plan.unplaced}
    if placed & unplaced or (placed | unplaced) != reading.pending.keys() or len(plan.placements) != len(placed):
        problems.append("pending pods are not each either placed once or explained")
    return problems


_CHECKPOINT_PLACEMENTS = 2_000
"""Placements checked between two checkpoints (a few milliseconds' work)."""
_CHECKPOINT_GPUS = 10_000
"""GPUs looked at between two checkpoints."""


@dataclass(frozen=True)
class SnapshotReading:
    """What the checks read of the snapshot, whatever the plan: made afresh from the snapshot, not taken from the
    planner's problem."""

    nodes: dict[str, NodeState]
    gpus: dict[GpuRef, GpuState]  # snapshot order
    single_nodes: list[NodeState]  # single-strategy nodes: the only ones that can advertise nothing
    pending: dict[str, Demand]  # the pending pods by name


def read_snapshot(snapshot: ClusterSnapshot) -> SnapshotReading:
    """The snapshot as the checks read it (`SnapshotReading`)."""
    return SnapshotReading(
        nodes={n.name: n for n in snapshot.nodes},
        gpus={(node.name, gpu.index): gpu for node in snapshot.nodes for gpu in node.gpus},
        single_nodes=[n for n in snapshot.nodes if n.strategy == "single"],
        pending={d.pod.name: d for d in demands(snapshot, weights_for(snapshot))},
    )


def _change_problems(
    snapshot: ClusterSnapshot,
    node: NodeState,
    gpu: GpuState,
    gp: GpuPlan,
    policy: PlanPolicy,
    tier: dict[GpuRef, int],
    infeasible: set[GpuRef],
) -> list[str]:
    """A GPU the plan rebuilds or evicts from: a feasible target the scope allows, exactly its holders evicted,
    none protected; records the priority its evictions free capacity at (`tier`), or that its target is
    infeasible (`infeasible`)."""
    ref = (node.name, gpu.index)
    if not gp.reconfigure:
        return [f"{node.name}/{gpu.index}: evicts {gp.evict} without reconfiguring"]
    if not _feasible(gpu.gpu_model.key, tuple(sorted(gp.target.items()))):
        infeasible.add(ref)
        return [f"{node.name}/{gpu.index}: target {gp.target} infeasible on {gpu.gpu_model.key}"]
    problems = []
    if (reason := policy.scope.unmanaged_reason(node)) is not None:
        problems.append(f"{node.name}/{gpu.index}: reconfigured, but migopt does not manage it ({reason})")
    if not policy.scope.permits(gpu.gpu_model, gp.target):
        problems.append(f"{node.name}/{gpu.index}: target {gp.target} outside the scope's allowlist")
    if sorted(gpu.holders) != sorted(gp.evict):
        problems.append(f"{node.name}/{gpu.index}: evicts {gp.evict}, holders are {sorted(gpu.holders)}")
    holders = [snapshot.running_pod(p) for p in gpu.holders]
    if not all(policy.may_evict(p) for p in holders):
        problems.append(f"{node.name}/{gpu.index}: evicts a protected pod")
    if holders:
        tier[ref] = max(p.priority for p in holders)
    return problems


class _FreeDevices:
    """The devices each GPU offers after the plan, by (profile, start), start -1 on a rebuilt GPU (whose devices
    count by profile: the driver picks their placements). A GPU's devices are counted when a placement first
    takes from it: most GPUs get no pod, and counting theirs all was most of the validation's work. A GPU offers
    devices when the snapshot has it and the plan has a line for it, and is not rebuilt to an `infeasible` map."""

    def __init__(self, gpus: dict[GpuRef, GpuState], plans: dict[GpuRef, GpuPlan], infeasible: set[GpuRef]) -> None:
        self._gpus, self._plans, self._infeasible = gpus, plans, infeasible
        self._left: dict[GpuRef, dict[tuple[str, int], int]] = {}

    def take(self, ref: GpuRef, profile: str, start: int) -> bool:
        """Take one device of the GPU; False when none is left (it is taken all the same)."""
        left = self._left.get(ref)
        if left is None:
            left = self._left[ref] = self._count(ref)
        remaining = left[profile, start] = left.get((profile, start), 0) - 1
        return remaining >= 0

    def _count(self, ref: GpuRef) -> dict[tuple[str, int], int]:
        gpu, plan = self._gpus.get(ref), self._plans.get(ref)
        if gpu is None or plan is None or ref in self._infeasible:
            return {}
        if not plan.reconfigure:
            return dict(_free_counts(gpu.free_instances))
        layout = target_layout(gpu.gpu_model.key, tuple(sorted(plan.target.items())))
        return dict(Counter((profile, -1) for profile, _ in layout))


@lru_cache(maxsize=4096)
def _free_counts(free: tuple[tuple[str, int], ...]) -> dict[tuple[str, int], int]:
    """The free instances (profile, start) counted: GPUs repeat a few layouts (callers copy the answer)."""
    return dict(Counter(free))


@lru_cache(maxsize=4096)
def _feasible(model_key: str, target: tuple[tuple[str, int], ...]) -> bool:
    """Whether some layout realises the map on the model (plans repeat a few maps over many GPUs)."""
    return find_layout(load_catalog().model(model_key), dict(target)) is not None


def _single_strategy_problems(reading: SnapshotReading, plan: PlanLines) -> list[str]:
    """Single-strategy nodes the plan touches (a GPU changes, or a pod is placed there) that would hold other than
    one profile on every GPU: the device plugin would label them MIG-INVALID and advertise no device."""
    if not reading.single_nodes:
        return []
    targets: dict[GpuRef, dict[str, int]] = {(g.node, g.index): g.target for g in plan.gpus if g.reconfigure}
    placed_on = {p.node for p in plan.placements}
    problems = []
    for node in reading.single_nodes:
        touched = node.name in placed_on or any((node.name, g.index) in targets for g in node.gpus)
        if touched and advertises_nothing(node, targets):
            held = [sorted(profiles_after(g, targets.get((node.name, g.index)))) for g in node.gpus]
            problems.append(f"{node.name}: single-strategy node would hold {held} per GPU, not one profile on all")
    return problems


def _placement_problems(
    placement: PodPlacement,
    demand: Demand | None,
    nodes: dict[str, NodeState],
    gpus: dict[GpuRef, GpuState],
    gpu_plans: dict[GpuRef, GpuPlan],
    free: _FreeDevices,
    tier: dict[GpuRef, int],
) -> list[str]:
    """One pod's placement: right node, right devices, free ones, not from higher-priority evictions."""
    node = nodes.get(placement.node)
    if demand is None or node is None:
        return [f"{placement.pod}: placed but not pending, or on an unknown node"]
    problems = []
    why = rejection(node, demand)
    if why is not None:
        problems.append(f"{placement.pod}: node {node.name} rejects it ({why})")
    got: dict[str, int] = {}
    for device in placement.devices:
        ref = (node.name, device.gpu)
        gpu = gpus.get(ref)
        gp = gpu_plans.get(ref)
        if gpu is None or gp is None:
            problems.append(f"{placement.pod}: no GPU {device.gpu} on {node.name}")
            continue
        if not free.take(ref, device.profile, -1 if gp.reconfigure else device.start):
            problems.append(f"{placement.pod}: {device.profile} on {node.name}/{device.gpu} is not free")
        key = resource_key(node, gpu, device.profile)
        got[key] = got.get(key, 0) + 1
        if tier.get(ref, -(2**63)) >= demand.pod.priority:
            problems.append(f"{placement.pod}: takes capacity freed by evicting pods of higher or equal priority")
    if got != dict(demand.resources):  # both hold positive counts only
        problems.append(f"{placement.pod}: got {got}, asked for {dict(demand.resources)}")
    return problems
