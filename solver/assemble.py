"""Turn `Decisions` into a `Plan`: per-GPU targets and evictions, placements, objective terms, explanations.

Evictions are derived here and only here: every pod holding an instance of a GPU whose map changes. A target
equal to the current map is no change at all (mig-parted leaves such a GPU untouched, spec §2.4).

A policy weighs several candidate decisions (the greedy baseline, each CP-SAT round) but returns one, so the
work is split: `draft` scores decisions from what they change (the GPUs that change and the pods placed), and
`write_plan` writes out every GPU, placement and reason of the draft that is returned, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache, lru_cache

from solver.catalog import load_catalog
from solver.checkpoint import Checkpoint, carry_on
from solver.decisions import Decisions, target_layout
from solver.demand import Demand
from solver.explain import Explainer
from solver.plan import (
    DeviceAssignment,
    GpuPlan,
    ObjectiveBreakdown,
    Plan,
    PlanStatus,
    PodPlacement,
    UnplacedPod,
)
from solver.plan_json import written_lines
from solver.problem import Problem
from solver.snapshot import GpuState, NodeState


@dataclass
class Draft:
    """A policy's decisions with the figures that rank them, before the plan is written out."""

    decisions: Decisions
    objectives: ObjectiveBreakdown
    status: PlanStatus
    policy: str
    solve_seconds: float
    bound: int
    notes: list[str] = field(default_factory=list)
    body: Body | None = None  # the plan's body, when it was written ahead (the optimal policy's speculation)
    checked: list[str] | None = None  # what the plan checks found in that body, when they ran ahead too

    @property
    def objective(self) -> int:
        return self.objectives.served_weight


def _changes(problem: Problem, decisions: Decisions) -> list[tuple[NodeState, GpuState, dict[str, int]]]:
    """The GPUs whose target differs from their current map, with that target (zero counts dropped)."""
    gpus = problem.gpu_index()
    changed = []
    for ref, target in decisions.targets.items():
        node, gpu = gpus[ref]
        target = {n: c for n, c in target.items() if c}
        if target != gpu.mig_devices:
            changed.append((node, gpu, target))
    return changed


@cache
def _target_fragmentation(model_key: str, target: tuple[tuple[str, int], ...], wanted: frozenset[str]) -> int:
    """Compute slices of a rebuilt GPU in no instance some pending request could use (keys as `resource_key`)."""
    model = load_catalog().model(model_key)
    useful = sum(model.profile(p).compute_slices for p, _ in target_layout(model_key, target) if p in wanted)
    return model.compute_slices - useful


def _fragmentation_change(problem: Problem, node: NodeState, gpu: GpuState, target: dict[str, int]) -> int:
    """How the GPU's idle slices change when it is rebuilt to `target` instead of kept."""
    model = gpu.gpu_model
    wanted = problem.wanted_profiles(node.strategy, model.key)
    rebuilt = _target_fragmentation(model.key, tuple(sorted(target.items())), wanted)
    return rebuilt - problem.kept_fragmentation(node, gpu)


def draft(
    problem: Problem,
    decisions: Decisions,
    *,
    status: PlanStatus,
    policy_name: str,
    solve_seconds: float,
    bound: int | None,
    objectives: ObjectiveBreakdown | None = None,
) -> Draft:
    """The decisions with their figures (`score`, unless given) and what the policy says of them."""
    breakdown = score(problem, decisions) if objectives is None else objectives
    return Draft(
        decisions=decisions,
        objectives=breakdown,
        status=status,
        policy=policy_name,
        solve_seconds=round(solve_seconds, 4),
        bound=max(bound if bound is not None else breakdown.served_weight, breakdown.served_weight),
        notes=list(decisions.notes),
    )


def score(problem: Problem, decisions: Decisions) -> ObjectiveBreakdown:
    """Served pods, evictions, changed GPUs and nodes, fragmentation (as `assemble` counts them for a whole plan),
    from the changed GPUs and placed pods alone."""
    snapshot = problem.snapshot
    changed = _changes(problem, decisions)
    evicted = {pod for _, gpu, _ in changed for pod in gpu.holders}
    placed = [d for d in problem.demands if d.pod.name in decisions.placements]
    fragmentation = problem.kept_fragmentation_total() + sum(
        _fragmentation_change(problem, node, gpu, target) for node, gpu, target in changed
    )
    return ObjectiveBreakdown(
        served_weight=sum(d.weight for d in placed),
        served_pods=len(placed),
        evicted_weight=sum(problem.weights.factor(snapshot.running_pod(p).priority) for p in evicted),
        evicted_pods=len(evicted),
        reconfigured_gpus=len(changed),
        touched_nodes=len({node.name for node, _, _ in changed}),
        fragmentation=fragmentation,
    )


def _changed_line(node: NodeState, gpu: GpuState, target: dict[str, int]) -> GpuPlan:
    """The plan line of a GPU rebuilt to `target` (`Problem.kept_lines` has those of the GPUs that keep theirs)."""
    layout = target_layout(gpu.gpu_model.key, tuple(sorted(target.items())))
    return GpuPlan(
        node=node.name, index=gpu.index, model=gpu.gpu_model.key, current=gpu.mig_devices, target=target,
        reconfigure=True, evict=sorted(gpu.holders), layout=list(layout),
    )  # fmt: skip


def prepare_writing(problem: Problem, unplaced_likely: bool) -> None:
    """Make what writing any plan of the problem reads, whatever it decides: the lines of GPUs that keep their
    maps and, when some pod will likely stay pending, the census its reason reads. The optimal policy calls this
    on its second thread while CP-SAT solves."""
    problem.kept_lines()
    if unplaced_likely:
        problem.census()


def write_kept_lines_json(problem: Problem, checkpoint: Checkpoint) -> None:
    """The JSON of the lines that keep their maps (`solver.plan_json`), for a plan written as JSON: the optimal
    policy writes them on its second thread while CP-SAT solves, and only then (`checkpoint` abandons the work
    once the solve has ended: writing the lines at the end is no slower than what is left of it)."""
    if problem.kept_lines_json is None:
        problem.kept_lines_json = written_lines(problem.kept_lines().values(), checkpoint)


_CHECKPOINT_PLACEMENTS = 5_000
"""Placements written between two checkpoints (tens of milliseconds' work)."""


@dataclass(frozen=True)
class Body:
    """What a plan's decisions alone decide: every GPU's line (node and index order), every placement, a reason for
    every pod left pending. Written apart from the header (status, bound, notes), which only the end of planning
    knows, so that it can be written beside CP-SAT (`solver.speculation`)."""

    gpus: list[GpuPlan]
    placements: list[PodPlacement]
    unplaced: list[UnplacedPod]


def write_body(
    problem: Problem, decisions: Decisions, objectives: ObjectiveBreakdown, checkpoint: Checkpoint = carry_on
) -> Body:
    """The body of a plan of these decisions, whose figures are `objectives` (`score`'s); `checkpoint` may abandon
    the work between its parts."""
    snapshot, policy = problem.snapshot, problem.policy
    changed = {(node.name, gpu.index): (node, gpu, target) for node, gpu, target in _changes(problem, decisions)}
    gpus = [line if ref not in changed else _changed_line(*changed[ref]) for ref, line in problem.kept_lines().items()]
    checkpoint()
    placements = []
    for demand in problem.demands:
        if demand.pod.name in decisions.placements:
            placements.append(_placement(demand, decisions))
            if len(placements) % _CHECKPOINT_PLACEMENTS == 0:
                checkpoint()
    checkpoint()
    explainer = Explainer(snapshot, policy, objectives.evicted_pods, objectives.reconfigured_gpus, problem.census())
    unplaced = [
        UnplacedPod(pod=d.pod.name, reason=explainer.reason(d))
        for d in problem.demands
        if d.pod.name not in decisions.placements
    ]
    return Body(gpus=gpus, placements=placements, unplaced=unplaced)


def write_plan(problem: Problem, chosen: Draft) -> Plan:
    """The whole plan of a draft: its body (`write_body`, unless it was written ahead) under its header."""
    body = chosen.body or write_body(problem, chosen.decisions, chosen.objectives)
    served = chosen.objective
    plan = Plan(
        status=chosen.status,
        policy=chosen.policy,
        solve_seconds=chosen.solve_seconds,
        objective=served,
        bound=chosen.bound,
        gap=round((chosen.bound - served) / chosen.bound, 6) if chosen.bound else 0.0,
        objectives=chosen.objectives,
        gpus=body.gpus,
        placements=body.placements,
        unplaced=body.unplaced,
        notes=list(chosen.notes) + problem.policy.scope.notes(problem.snapshot),
    )
    if problem.kept_lines_json is not None:  # written ahead: the plan holds the same line objects
        plan._written_lines = problem.kept_lines_json
    return plan


def _placement(demand: Demand, decisions: Decisions) -> PodPlacement:
    devices = decisions.placements[demand.pod.name]
    assignments = [_assignment(d.gpu, d.profile, d.start) for d in devices]
    return PodPlacement.placed(demand.pod.name, devices[0].node, assignments)


@lru_cache(maxsize=4096)
def _assignment(gpu: int, profile: str, start: int) -> DeviceAssignment:
    """A placement's device: placements repeat a few hundred (GPU index, profile, start) across the cluster, so
    one frozen model each is shared instead of one made per device of every placed pod."""
    return DeviceAssignment(gpu=gpu, profile=profile, start=start)
