"""From the aggregated answer (how many of each unit change, to what) back to concrete GPUs and pods.

Deterministic: members, targets and pods are taken in sorted order, so the same snapshot gives the same plan.
Reconfigurations are concentrated on nodes already being changed, to touch as few nodes as possible.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from solver.cpsat import AggregateSolution
from solver.decisions import Decisions, Device, GpuRef, free_devices, resource_key
from solver.demand import Demand, rejection
from solver.geometry import maximal_maps
from solver.plan import PlanPolicy
from solver.problem import Member, PodGroup, PoolKey, Problem
from solver.snapshot import ClusterSnapshot, GpuState, NodeState

FreeIndex = dict[tuple[int, str], dict[str, list[Device]]]  # (pool index, resource key) -> node -> free devices


def _choose_members(problem: Problem, answer: AggregateSolution) -> dict[int, list[Member]]:
    """Which members of each unit are reconfigured: prefer nodes already touched, then name order."""
    touched: set[str] = set()
    chosen: dict[int, list[Member]] = {}
    for ui in sorted(answer.reconfigured, key=lambda u: (-answer.reconfigured[u], u)):
        members = sorted(problem.units[ui].members, key=lambda m: (m.node not in touched, m.node, m.gpus))
        chosen[ui] = members[: answer.reconfigured[ui]]
        touched.update(m.node for m in chosen[ui])
    return chosen


def _targets(problem: Problem, answer: AggregateSolution, chosen: dict[int, list[Member]]) -> dict[Member, int]:
    """Give each group's reconfigured members (sorted) the chosen targets, never a member its own current map."""
    result: dict[Member, int] = {}
    for gi, group in enumerate(problem.reconfig_groups):
        members = sorted(
            ((m, problem.units[u].current) for u in group.units for m in chosen.get(u, [])),
            key=lambda mc: (mc[0].node, mc[0].gpus),
        )
        forbidden = [
            next((ti for ti, t in enumerate(group.targets) if t.as_current == current), -1) for _, current in members
        ]
        assignment = _assign(forbidden, list(answer.targets.get(gi, [])))
        result.update((member, ti) for (member, _), ti in zip(members, assignment, strict=True))
    return result


def _assign(forbidden: list[int], capacity: list[int]) -> list[int]:
    """A target per member (member i may not take `forbidden[i]`) using exactly `capacity[t]` of each target.

    Augmenting paths over target types (Kuhn's algorithm with capacities); the IP's bounds guarantee success.
    """
    owner: list[list[int]] = [[] for _ in capacity]
    taken = [-1] * len(forbidden)

    def augment(member: int, seen: set[int]) -> bool:
        for t in range(len(capacity)):
            if t == forbidden[member] or t in seen or not capacity[t]:
                continue
            seen.add(t)
            if len(owner[t]) < capacity[t]:
                owner[t].append(member)
                taken[member] = t
                return True
            for other in list(owner[t]):
                if augment(other, seen):
                    owner[t].remove(other)
                    owner[t].append(member)
                    taken[member] = t
                    return True
        return False

    for member in range(len(forbidden)):
        if not augment(member, set()):
            raise ValueError("no assignment of targets to members exists")
    return taken


def _index(problem: Problem, answer: AggregateSolution, decisions: Decisions) -> FreeIndex:
    """Targets for the chosen members (recorded in `decisions`) and every free device, by pool and key."""
    nodes = {n.name: n for n in problem.snapshot.nodes}
    chosen = _choose_members(problem, answer)
    target_of = _targets(problem, answer, chosen)
    pool_index = {pool: i for i, pool in enumerate(problem.pools)}
    group_of_unit = {u: gi for gi, g in enumerate(problem.reconfig_groups) for u in g.units}
    free: FreeIndex = defaultdict(dict)
    for ui, unit in enumerate(problem.units):
        for member in unit.members:
            node = nodes[member.node]
            gpus = [g for g in node.gpus if g.index in member.gpus]
            ti = target_of.get(member)
            if ti is None:
                pool: PoolKey = unit.pool
                targets: list[dict[str, int] | None] = [None] * len(gpus)
            else:
                pool = unit.reconfig_pool
                devices = dict(problem.reconfig_groups[group_of_unit[ui]].targets[ti].devices)
                targets = [devices] * len(gpus)
                for gpu in gpus:
                    decisions.targets[(node.name, gpu.index)] = devices
            for gpu, target in zip(gpus, targets, strict=True):
                for device in free_devices(node, gpu, target):
                    slot = free[pool_index[pool], resource_key(node, gpu, device.profile)]
                    slot.setdefault(node.name, []).append(device)
    return free


def _take_on_one_node(demand: Demand, free: FreeIndex, pools: list[int]) -> list[Device] | None:
    """All devices of one pod from a single node (the first in name order that has them), from allowed pools."""
    first = demand.resources[0][0]
    for node in sorted({node for pi in pools for node in free.get((pi, first), {})}):
        offer = {
            key: [(pi, d) for pi in pools for d in free.get((pi, key), {}).get(node, [])] for key, _ in demand.resources
        }
        if all(len(offer[key]) >= count for key, count in demand.resources):
            taken = [(pi, key, d) for key, count in demand.resources for pi, d in offer[key][:count]]
            for pi, key, device in taken:
                _remove(free, pi, key, device)
            return [device for _, _, device in taken]
    return None


def _remove(free: FreeIndex, pool: int, key: str, device: Device) -> None:
    devices = free[pool, key][device.node]
    devices.remove(device)
    if not devices:
        del free[pool, key][device.node]


def _take_single(demand: Demand, free: FreeIndex, quota: dict[int, int], pools: list[int]) -> list[Device] | None:
    """One device for a one-device pod: from a pool the IP allotted to its group while quota lasts, else any."""
    key = demand.resources[0][0]
    for pi in [p for p in pools if quota.get(p, 0) > 0] + pools:
        by_node = free.get((pi, key))
        if by_node:
            quota[pi] = quota.get(pi, 0) - 1
            device = next(iter(by_node.values()))[0]
            _remove(free, pi, key, device)
            return [device]
    return None


def _place(problem: Problem, answer: AggregateSolution, free: FreeIndex, decisions: Decisions) -> None:
    """Place the pods the IP serves, one-device pods first, as the IP allotted them; then several-device pods,
    whose co-location the IP relaxed; then let any other pod take what is left."""
    waiting: list[tuple[PodGroup, Demand]] = []
    single_first = sorted(range(len(problem.pod_groups)), key=lambda di: problem.pod_groups[di].demands[0].devices > 1)
    quotas: dict[int, dict[int, int]] = defaultdict(dict)
    for (di, pi, _), count in answer.allocation.items():
        quotas[di][pi] = count
    for di in single_first:
        group = problem.pod_groups[di]
        pools = [pi for pi, pool in enumerate(problem.pools) if problem.usable(group, pool)]
        quota = quotas[di]
        for n, demand in enumerate(group.demands):
            taken = None
            if n < answer.served.get(di, 0):
                single = demand.devices == 1
                taken = _take_single(demand, free, quota, pools) if single else _take_on_one_node(demand, free, pools)
            if taken is None:
                waiting.append((group, demand))
            else:
                decisions.placements[demand.pod.name] = taken
    for group, demand in sorted(waiting, key=lambda gd: (-gd[0].weight, gd[1].pod.name)):
        pools = [pi for pi, pool in enumerate(problem.pools) if problem.usable(group, pool)]
        taken = _take_on_one_node(demand, free, pools)
        if taken is not None:
            decisions.placements[demand.pod.name] = taken


def _drop_idle_reconfigurations(problem: Problem, decisions: Decisions) -> None:
    """A reconfigured GPU that ends up serving no pod is left as it is: no disruption for nothing."""
    used: set[GpuRef] = {(d.node, d.gpu) for devices in decisions.placements.values() for d in devices}
    nodes = {n.name: n for n in problem.snapshot.nodes}
    for ref in sorted(decisions.targets):
        node = nodes[ref[0]]
        if node.strategy == "single":
            refs = [(node.name, g.index) for g in node.gpus]
            if not any(r in used for r in refs):
                for r in refs:
                    decisions.targets.pop(r, None)
        elif ref not in used:
            del decisions.targets[ref]


def disaggregate(problem: Problem, answer: AggregateSolution) -> Decisions:
    decisions = Decisions()
    free = _index(problem, answer, decisions)
    _place(problem, answer, free, decisions)
    _repair(problem, decisions)
    _drop_idle_reconfigurations(problem, decisions)
    return decisions


def _repair(problem: Problem, decisions: Decisions) -> None:
    """Place several-device pods the aggregated answer could not co-locate, by re-targeting spare GPUs of a node.

    For each such pod (highest weight first) and each node that accepts it and has all its profiles (name
    order): the node's free devices the pod may use, plus GPUs that serve no pod in the plan and whose holders it
    may displace (lower priority, evictable), given the maps that best cover what is still missing, within the
    policy caps.
    """
    stranded = [
        d for g in problem.pod_groups for d in g.demands if d.devices > 1 and d.pod.name not in decisions.placements
    ]
    if not stranded:
        return
    used: dict[str, set[Device]] = defaultdict(set)
    for devices in decisions.placements.values():
        for device in devices:
            used[device.node].add(device)
    nodes = sorted(problem.snapshot.nodes, key=lambda n: n.name)
    profiles = {n.name: {p for g in n.gpus for p in g.gpu_model.profile_names} for n in nodes}
    for demand in stranded:
        needed = {k.rsplit(":", 1)[-1] for k, _ in demand.resources}
        for node in nodes:
            if needed <= profiles[node.name] and rejection(node, demand) is None:
                taken = _repair_on(problem, decisions, node, demand, used[node.name])
                if taken:
                    used[node.name].update(taken)
                    break


def _repair_on(
    problem: Problem, decisions: Decisions, node: NodeState, demand: Demand, used: set[Device]
) -> list[Device]:
    """The devices the pod gets on this node after re-targeting spare GPUs (recorded in `decisions`), or []."""
    policy, snapshot = problem.policy, problem.snapshot
    busy = {d.gpu for d in used}
    offer: dict[int, list[Device]] = {}
    for gpu in node.gpus:
        target = decisions.targets.get((node.name, gpu.index))
        if _tier(snapshot, gpu, target) < demand.pod.priority:
            offer[gpu.index] = [d for d in free_devices(node, gpu, target) if d not in used]
    wanted = Counter(dict(demand.resources))
    new_targets: dict[int, dict[str, int]] = {}
    for gpu in sorted(node.gpus, key=lambda g: (len(g.holders), g.index)):
        missing = wanted - _keys(node, offer, exclude=gpu.index)
        if not missing or gpu.index in busy or not _displaceable(snapshot, gpu, demand, policy):
            continue
        choice = _best_map(node, gpu, missing)
        current = sum((_keys(node, {gpu.index: offer.get(gpu.index, [])}) & missing).values())
        if choice is not None and choice[1] > current:
            new_targets[gpu.index] = choice[0]
            offer[gpu.index] = free_devices(node, gpu, choice[0])
    if wanted - _keys(node, offer) or not _within_caps(problem, decisions, node, new_targets):
        return []
    for index, target in new_targets.items():
        decisions.targets[(node.name, index)] = target
    pool = [(resource_key(node, _gpu(node, d.gpu), d.profile), d) for i in sorted(offer) for d in offer[i]]
    taken = [d for key, count in demand.resources for d in [d for k, d in pool if k == key][:count]]
    decisions.placements[demand.pod.name] = taken
    return taken


def _gpu(node: NodeState, index: int) -> GpuState:
    return next(g for g in node.gpus if g.index == index)


def _keys(node: NodeState, offer: dict[int, list[Device]], exclude: int | None = None) -> Counter[str]:
    return Counter(resource_key(node, _gpu(node, i), d.profile) for i, ds in offer.items() if i != exclude for d in ds)


def _tier(snapshot: ClusterSnapshot, gpu: GpuState, target: dict[str, int] | None) -> float:
    """The priority a pod must exceed to use this GPU's devices: its holders' if it changes, else none."""
    if target is None or target == gpu.mig_devices or not gpu.holders:
        return float("-inf")
    return max(snapshot.running_pod(p).priority for p in gpu.holders)


def _displaceable(snapshot: ClusterSnapshot, gpu: GpuState, demand: Demand, policy: PlanPolicy) -> bool:
    """The pod may take this GPU's place: every holder may be evicted and ranks below it."""
    holders = [snapshot.running_pod(p) for p in gpu.holders]
    return all(policy.may_evict(p) and p.priority < demand.pod.priority for p in holders)


def _best_map(node: NodeState, gpu: GpuState, missing: Counter[str]) -> tuple[dict[str, int], int] | None:
    """The map (never the current one) covering most of what is missing, and how much it covers."""
    model = gpu.gpu_model
    profiles = [p for p in model.profile_names if resource_key(node, gpu, p) in missing]
    if not profiles:
        return None
    best: tuple[dict[str, int], int] | None = None
    for devices in maximal_maps(model, profiles):
        if devices == gpu.mig_devices:
            continue
        covered = sum(min(c, missing[resource_key(node, gpu, p)]) for p, c in devices.items())
        if best is None or covered > best[1]:
            best = (devices, covered)
    return best


def _within_caps(problem: Problem, decisions: Decisions, node: NodeState, new: dict[int, dict[str, int]]) -> bool:
    if problem.policy.max_evictions is None and problem.policy.max_reconfigurations is None:
        return True
    nodes = {n.name: n for n in problem.snapshot.nodes}
    changing = {
        ref for ref, target in decisions.targets.items() if target != _gpu(nodes[ref[0]], ref[1]).mig_devices
    } | {(node.name, i) for i in new}
    evicted = {p for ref in changing for p in _gpu(nodes[ref[0]], ref[1]).holders}
    policy = problem.policy
    return (policy.max_evictions is None or len(evicted) <= policy.max_evictions) and (
        policy.max_reconfigurations is None or len(changing) <= policy.max_reconfigurations
    )
