"""Turn `Decisions` into a `Plan`: per-GPU targets and evictions, placements, objective terms, explanations.

Evictions are derived here and only here: every pod holding an instance of a GPU whose map changes. A target
equal to the current map is no change at all (mig-parted leaves such a GPU untouched, spec §2.4).
"""

from __future__ import annotations

from solver.decisions import Decisions, resource_key, target_layout
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
from solver.problem import Problem
from solver.snapshot import GpuState, NodeState


def _gpu_plan(node: NodeState, gpu: GpuState, decisions: Decisions) -> GpuPlan:
    current = gpu.mig_devices
    target = decisions.targets.get((node.name, gpu.index), current)
    target = {n: c for n, c in target.items() if c}
    change = target != current
    layout = target_layout(gpu.gpu_model.key, tuple(sorted(target.items()))) if change else gpu.layout_pairs
    return GpuPlan(
        node=node.name,
        index=gpu.index,
        model=gpu.gpu_model.key,
        current=current,
        target=target,
        reconfigure=change,
        evict=sorted(gpu.holders) if change else [],
        layout=list(layout),
    )


def _fragmentation(node: NodeState, gpu: GpuState, plan: GpuPlan, wanted: set[str]) -> int:
    """Compute slices neither held by a kept pod nor in an instance some pending request could use."""
    model = gpu.gpu_model
    useful = sum(model.profile(p).compute_slices for p, _ in plan.layout if resource_key(node, gpu, p) in wanted)
    if not plan.reconfigure:
        useful += sum(
            model.profile(i.profile).compute_slices
            for i in gpu.instances
            if i.pod and resource_key(node, gpu, model.profile(i.profile).name) not in wanted
        )
    return model.compute_slices - useful


def assemble(
    problem: Problem,
    decisions: Decisions,
    *,
    status: PlanStatus,
    policy_name: str,
    solve_seconds: float,
    bound: int | None,
) -> Plan:
    snapshot, policy = problem.snapshot, problem.policy
    wanted = {k for d in problem.demands for k, _ in d.resources}
    gpus: list[GpuPlan] = []
    fragmentation = 0
    for node in sorted(snapshot.nodes, key=lambda n: n.name):
        for gpu in sorted(node.gpus, key=lambda g: g.index):
            plan = _gpu_plan(node, gpu, decisions)
            gpus.append(plan)
            fragmentation += _fragmentation(node, gpu, plan, wanted)
    evicted = sorted({pod for g in gpus for pod in g.evict})
    placed = [d for d in problem.demands if d.pod.name in decisions.placements]
    served_weight = sum(d.weight for d in placed)
    breakdown = ObjectiveBreakdown(
        served_weight=served_weight,
        served_pods=len(placed),
        evicted_weight=sum(problem.weights.factor(snapshot.running_pod(p).priority) for p in evicted),
        evicted_pods=len(evicted),
        reconfigured_gpus=sum(g.reconfigure for g in gpus),
        touched_nodes=len({g.node for g in gpus if g.reconfigure}),
        fragmentation=fragmentation,
    )
    explainer = Explainer(snapshot, policy, breakdown.evicted_pods, breakdown.reconfigured_gpus)
    best_bound = max(bound if bound is not None else served_weight, served_weight)
    return Plan(
        status=status,
        policy=policy_name,
        solve_seconds=round(solve_seconds, 4),
        objective=served_weight,
        bound=best_bound,
        gap=round((best_bound - served_weight) / best_bound, 6) if best_bound else 0.0,
        objectives=breakdown,
        gpus=gpus,
        placements=[_placement(d, decisions) for d in placed],
        unplaced=[
            UnplacedPod(pod=d.pod.name, reason=explainer.reason(d))
            for d in problem.demands
            if d.pod.name not in decisions.placements
        ],
        notes=list(decisions.notes),
    )


def _placement(demand: Demand, decisions: Decisions) -> PodPlacement:
    devices = decisions.placements[demand.pod.name]
    return PodPlacement(
        pod=demand.pod.name,
        node=devices[0].node,
        devices=[DeviceAssignment(gpu=d.gpu, profile=d.profile, start=d.start) for d in devices],
    )
