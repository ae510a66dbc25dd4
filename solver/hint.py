"""The greedy plan, read back as an answer of the aggregated problem: CP-SAT's first hint.

CP-SAT runs without presolve and, on large clusters, spent its whole time limit looking for a first solution. The
greedy baseline is computed anyway and is a feasible answer: it evicts nobody (so everything it uses is in the
untiered pools), it respects the caps, and each GPU it rebuilds gets a map that some target of its
reconfiguration group covers (the first target offering at least as many devices of every profile a pod asks for).
Hinting every variable with it gives CP-SAT a complete solution to start from, as good as greedy's.
"""

from __future__ import annotations

from collections import Counter

from solver.cpsat import AggregateSolution
from solver.decisions import Decisions, resource_key
from solver.problem import Member, Problem, Target


def _covering(targets: list[Target], devices: dict[str, int], wanted: frozenset[str], current: object) -> int | None:
    """The first target offering at least `devices`' count of every wanted profile, other than the current map."""
    for ti, target in enumerate(targets):
        offered = dict(target.devices)
        if target.as_current != current and all(offered.get(p, 0) >= c for p, c in devices.items() if p in wanted):
            return ti
    return None


def greedy_answer(problem: Problem, decisions: Decisions) -> AggregateSolution:
    """The decisions as counts per unit, target, pod group and pool (what `GeometryModel.hint` reads; a unit none of
    whose members is rebuilt is left out, read as 0).

    Only members on nodes the greedy plan changes can be rebuilt, and only GPUs a pod is placed on need their
    unit, so members on other nodes are passed over without looking at their GPUs (at 5,000 nodes this took
    0.15 s on the main thread, where CP-SAT's first stage asks for it)."""
    group_of_unit = {u: gi for gi, g in enumerate(problem.reconfig_groups) for u in g.units}
    gpus = problem.gpu_index()
    touched = {node for node, _ in decisions.targets}
    placed = {(d.node, d.gpu) for devices in decisions.placements.values() for d in devices}
    looked_at = touched | {node for node, _ in placed}
    reconfigured: Counter[int] = Counter()
    targets: dict[int, list[int]] = {gi: [0] * len(g.targets) for gi, g in enumerate(problem.reconfig_groups)}
    member_of: dict[tuple[str, int], tuple[int, bool]] = {}  # GPU a pod is placed on -> (unit, rebuilt in the hint)
    for ui, unit in enumerate(problem.units):
        for member in unit.members:
            if member.node not in looked_at:
                continue
            rebuilt = member.node in touched and _rebuilt(problem, decisions, ui, member, group_of_unit, targets)
            if rebuilt:
                reconfigured[ui] += 1
            for index in member.gpus:
                if (member.node, index) in placed:
                    member_of[member.node, index] = (ui, rebuilt)
    pool_index = {pool: i for i, pool in enumerate(problem.pools)}
    group_of_pod = problem.group_of_pod()
    served: Counter[int] = Counter()
    allocation: Counter[tuple[int, int, str]] = Counter()
    for pod, devices in decisions.placements.items():
        di = group_of_pod[pod]
        served[di] += 1
        for device in devices:
            ui, rebuilt = member_of[device.node, device.gpu]
            unit = problem.units[ui]
            node, gpu = gpus[device.node, device.gpu]
            pool = pool_index[unit.reconfig_pool if rebuilt else unit.pool]
            allocation[di, pool, resource_key(node, gpu, device.profile)] += 1
    return AggregateSolution(
        reconfigured=dict(reconfigured),
        targets=targets,
        served=dict(served),
        allocation=dict(allocation),
        proven_optimal=False,
        objective=0,
        bound=0,
        solve_seconds=0.0,
    )


def _rebuilt(
    problem: Problem,
    decisions: Decisions,
    ui: int,
    member: Member,
    group_of_unit: dict[int, int],
    targets: dict[int, list[int]],
) -> bool:
    """Whether the greedy plan rebuilds the member; if so its covering target is counted in `targets`."""
    gpus = problem.gpu_index()
    changed = [
        decisions.targets[member.node, i]
        for i in member.gpus
        if (member.node, i) in decisions.targets
        and decisions.targets[member.node, i] != gpus[member.node, i][1].mig_devices
    ]
    if not changed or ui not in group_of_unit:
        return False
    unit = problem.units[ui]
    node = gpus[member.node, member.gpus[0]][0]
    wanted = problem.wanted_profiles(node.strategy, unit.model.key)
    gi = group_of_unit[ui]
    ti = _covering(problem.reconfig_groups[gi].targets, changed[0], wanted, unit.current)
    if ti is None:
        return False
    targets[gi][ti] += 1
    return True
