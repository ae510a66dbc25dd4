"""The proactive policy: the optimal plan for the pods pending now, then idle GPUs reshaped ahead of forecast demand.

A pod asking for a profile no idle GPU offers waits a batch window plus a whole mig-manager run, even when that
profile is asked for every few minutes. This policy plans the pending pods exactly as `optimal` does, and then
shapes what that plan leaves idle for the snapshot's `forecast` (the controller's expected arrivals):

- only GPUs the pending plan leaves idle (no pod holds or is placed on them, not reconfigured) on mixed-strategy
  nodes migopt manages; single-strategy nodes change whole and are left to pending demand;
- by the optimal policy again, on those GPUs alone, which hold no pod: no pod is ever evicted for a forecast, and
  the targets are the demanded profiles' maximal maps (no slice left to a profile nobody asks for). This second
  solve gets a quarter of the time limit on top of the pending plan's;
- forecast pods ask for at most `PlanPolicy.forecast_share` of those GPUs' compute slices, the most frequent shapes
  first; they carry no selectors or tolerations, so tainted nodes are not shaped for them;
- reshaped GPUs are marked `forecast` in the plan; nothing is placed for forecast pods, and the objective's figures
  stay those of the pending plan except `reconfigured_gpus` and `touched_nodes`, which count the reshapes too.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from solver.demand import key_compute_slices
from solver.plan import GpuPlan, Plan, PlanPolicy
from solver.policies import optimal
from solver.policies.common import checked
from solver.scope import scoped
from solver.snapshot import PRIORITY_MIN, ClusterSnapshot, ForecastDemand, NodeState, PendingPod

FORECAST_POD_PREFIX = "forecast/"


def plan(
    snapshot: ClusterSnapshot, policy: PlanPolicy, *, dump_model: Path | None = None, as_json: bool = False
) -> Plan:
    """The optimal plan, with idle GPUs reshaped for the forecast (module docstring)."""
    pending_plan = optimal.plan(snapshot, policy, dump_model=dump_model, as_json=as_json)
    pending_plan.policy = "proactive"
    if not snapshot.forecast:
        return pending_plan
    room = policy.max_reconfigurations
    if room is not None:
        room -= pending_plan.objectives.reconfigured_gpus
        if room <= 0:
            return pending_plan
    idle = _idle_snapshot(scoped(snapshot, policy.scope), pending_plan)
    pods = _forecast_pods(snapshot.forecast, _compute_slices(idle) * policy.forecast_share)
    if not pods:
        return pending_plan
    shaping_policy = policy.model_copy(update={"max_reconfigurations": room, "time_limit_s": policy.time_limit_s / 4})
    shaping = optimal.plan(idle.model_copy(update={"pods": pods}), shaping_policy)
    return checked(snapshot, _merged(pending_plan, shaping, snapshot.forecast), policy)


def _idle_snapshot(snapshot: ClusterSnapshot, pending_plan: Plan) -> ClusterSnapshot:
    """The managed mixed-strategy nodes with only the GPUs the pending plan leaves idle, and no pods."""
    busy = {(g.node, g.index) for g in pending_plan.gpus if g.reconfigure}
    busy |= {(p.node, d.gpu) for p in pending_plan.placements for d in p.devices}
    nodes: list[NodeState] = []
    for node in snapshot.nodes:
        if node.unmanaged is not None or node.strategy != "mixed":
            continue
        gpus = [g for g in node.gpus if not g.holders and (node.name, g.index) not in busy]
        if gpus:
            nodes.append(node.model_copy(update={"gpus": gpus}))
    return ClusterSnapshot(nodes=nodes)


def _compute_slices(snapshot: ClusterSnapshot) -> int:
    return sum(g.gpu_model.compute_slices for n in snapshot.nodes for g in n.gpus)


def _forecast_pods(forecast: list[ForecastDemand], budget: float) -> list[PendingPod]:
    """Forecast demand as the lowest-priority pending pods, most expected shapes first, within `budget` slices."""
    pods: list[PendingPod] = []
    spent = 0
    for number, demand in enumerate(sorted(forecast, key=lambda d: -d.count)):
        size = _request_slices(demand.requests)
        for copy in range(demand.count):
            if size == 0 or spent + size > budget:
                break
            spent += size
            name = f"{FORECAST_POD_PREFIX}{number}-{copy}"
            pods.append(PendingPod(name=name, requests=demand.requests, priority=PRIORITY_MIN))
    return pods


def _request_slices(requests: dict[str, int]) -> int:
    """Compute slices one pod of this request takes (mixed-strategy MIG requests; 0 for anything else)."""
    probe = PendingPod(name="probe", requests=requests)
    return sum(key_compute_slices(profile) * count for profile, count in probe.mig_requests.items())


def _merged(pending_plan: Plan, shaping: Plan, forecast: list[ForecastDemand]) -> Plan:
    """The pending plan with the shaping plan's reconfigurations, marked as for forecast demand."""
    reshaped = {(g.node, g.index): g for g in shaping.gpus if g.reconfigure}
    if not reshaped:
        return pending_plan
    gpus: list[GpuPlan] = []
    for gpu in pending_plan.gpus:
        shaped = reshaped.get((gpu.node, gpu.index))
        gpus.append(gpu if shaped is None else replace(shaped, forecast=True))
    touched = {g.node for g in gpus if g.reconfigure or g.evict}
    objectives = pending_plan.objectives.model_copy(
        update={"reconfigured_gpus": sum(g.reconfigure for g in gpus), "touched_nodes": len(touched)}
    )
    expected = ", ".join(f"{d.count}× {_shape(d.requests)}" for d in forecast)
    note = f"proactive: {len(reshaped)} idle GPUs reshaped for forecast demand ({expected})"
    notes = [*pending_plan.notes, note]
    return pending_plan.model_copy(update={"gpus": gpus, "objectives": objectives, "notes": notes})


def _shape(requests: dict[str, int]) -> str:
    """`mig-1g.10gb` or `2×mig-1g.10gb+mig-3g.40gb`: a request as the note shows it."""
    names = {r: r.removeprefix("nvidia.com/") for r in requests}
    return "+".join(sorted(f"{c}×{names[r]}" if c > 1 else names[r] for r, c in requests.items()))
