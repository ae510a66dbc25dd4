"""From the aggregated answer (how many of each unit change, to what) back to concrete GPUs and pods.

Deterministic: members, targets and pods are taken in sorted order, so the same snapshot gives the same plan.
Reconfigurations are concentrated on nodes already being changed, to touch as few nodes as possible.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import chain

from solver.checkpoint import Checkpoint, carry_on
from solver.cpsat import AggregateSolution
from solver.decisions import Decisions, Device, GpuRef, advertises_nothing
from solver.demand import Demand
from solver.problem import Member, PodGroup, PoolKey, Problem
from solver.repair import repair

_CHECKPOINT_UNITS = 2_000
"""Units indexed between two checkpoints."""

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
        index: dict[tuple[tuple[str, int], ...] | None, int] = {}
        for ti, t in enumerate(group.targets):
            index.setdefault(t.as_current, ti)  # the first target holding that map
        forbidden = [index.get(current, -1) for _, current in members]
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


def _index(
    problem: Problem, answer: AggregateSolution, decisions: Decisions, checkpoint: Checkpoint = carry_on
) -> FreeIndex:
    """Targets for the chosen members (recorded in `decisions`) and every free device, by pool and key."""
    nodes = {n.name: n for n in problem.snapshot.nodes}
    gpu_index = problem.gpu_index()
    chosen = _choose_members(problem, answer)
    target_of = _targets(problem, answer, chosen)
    pool_index = {pool: i for i, pool in enumerate(problem.pools)}
    group_of_unit = {u: gi for gi, g in enumerate(problem.reconfig_groups) for u in g.units}
    free: FreeIndex = defaultdict(dict)
    kept_offers = problem.kept_offers()
    for ui, unit in enumerate(problem.units):
        if ui % _CHECKPOINT_UNITS == 0:
            checkpoint()
        rebuilt = ui in chosen  # else no member of the unit changes: all are kept, in the unit's own pool
        if not rebuilt:  # what its members offer, copied (the index's lists shrink as pods are placed)
            pi = pool_index[unit.pool]
            for key, by_node in kept_offers.get(ui, {}).items():
                table = free[pi, key]
                for name, offered in by_node.items():
                    table.setdefault(name, []).extend(offered)
            continue
        offers = kept_offers.get(ui, {})
        changing = {member.node for member in chosen[ui]}
        copied: set[str] = set()
        for member in unit.members:
            if member.node not in changing:  # none of the node's members changes: what it offers, copied
                if member.node not in copied:
                    copied.add(member.node)
                    _copy_offers(free, pool_index[unit.pool], offers, member.node)
                continue
            node = nodes[member.node]
            if len(member.gpus) == 1:
                gpus = [gpu_index[member.node, member.gpus[0]][1]]
            else:  # the node's order, which the devices are offered in
                gpus = [g for g in node.gpus if g.index in member.gpus]
            ti = target_of.get(member)
            if ti is None:
                if advertises_nothing(node, {}):
                    continue  # a kept single-strategy node holding several profiles advertises no device
                pool: PoolKey = unit.pool
                targets: list[dict[str, int] | None] = [None] * len(gpus)
            else:
                pool = unit.reconfig_pool
                devices = dict(problem.reconfig_groups[group_of_unit[ui]].targets[ti].devices)
                targets = [devices] * len(gpus)
                for gpu in gpus:
                    decisions.targets[(node.name, gpu.index)] = devices
            pi = pool_index[pool]
            for gpu, target in zip(gpus, targets, strict=True):
                for key, device in problem.keyed_devices(node, gpu, target):
                    free[pi, key].setdefault(node.name, []).append(device)
    return free


def _copy_offers(free: FreeIndex, pool: int, offers: dict[str, dict[str, list[Device]]], node: str) -> None:
    """Index what a kept node of a unit offers (`Problem.kept_offers`, in the unit's member order): a unit
    that changes holds thousands of members of which a few change, and the rest offer what they always do."""
    for key, by_node in offers.items():
        offered = by_node.get(node)
        if offered:
            free[pool, key].setdefault(node, []).extend(offered)


class _OneNode:
    """Takes all devices of a pod from the first node in name order that has them, from the allowed pools.

    Free devices only ever leave the index while pods are placed, so a node that could not take a pod cannot
    take a later pod of the same group (same request and pools) either: each group's scan goes on from where its
    previous pod's ended, and the nodes offering a first key are sorted once per pools and key.
    """

    def __init__(self, free: FreeIndex) -> None:
        self.free = free
        self._names: dict[tuple[tuple[int, ...], str], list[str]] = {}
        self._resume: dict[int, int] = {}

    def take(self, group: int, demand: Demand, pools: list[int]) -> list[Device] | None:
        free = self.free
        first = demand.resources[0][0]
        names = self._names.get((tuple(pools), first))
        if names is None:
            names = self._names[tuple(pools), first] = sorted({n for pi in pools for n in free.get((pi, first), {})})
        # the pools' devices of each key by node, only pools with some left: devices only ever leave the index
        by_key = [(count, [t for t in (free.get((pi, key)) for pi in pools) if t]) for key, count in demand.resources]
        for position in range(self._resume.get(group, 0), len(names)):
            node = names[position]
            if _offers(node, by_key):
                taken = [
                    (pi, key, d)
                    for key, count in demand.resources
                    for pi, d in [(pi, d) for pi in pools for d in free.get((pi, key), {}).get(node, [])][:count]
                ]
                for pi, key, device in taken:
                    _remove(free, pi, key, device)
                self._resume[group] = position
                return [device for _, _, device in taken]
        self._resume[group] = len(names)
        return None


def _offers(node: str, by_key: list[tuple[int, list[dict[str, list[Device]]]]]) -> bool:
    """Whether the node has, for each key, at least its count of devices over the key's tables (plain loops: this
    runs for every node a scan passes)."""
    for count, tables in by_key:
        have = 0
        for by_node in tables:
            have += len(by_node.get(node, ()))
        if have < count:
            return False
    return True


def _remove(free: FreeIndex, pool: int, key: str, device: Device) -> None:
    devices = free[pool, key][device.node]
    devices.remove(device)
    if not devices:
        del free[pool, key][device.node]


def _take_single(
    demand: Demand, free: FreeIndex, quota: dict[int, int], allotted: list[int], pools: list[int]
) -> list[Device] | None:
    """One device for a one-device pod: from a pool the IP allotted to its group (`allotted`: the quota's pools,
    sorted) while quota lasts, else any."""
    key = demand.resources[0][0]
    for pi in chain([pi for pi in allotted if quota[pi] > 0], pools):  # quota: usable pools only
        by_node = free.get((pi, key))
        if by_node:
            quota[pi] = quota.get(pi, 0) - 1
            device = next(iter(by_node.values()))[0]
            _remove(free, pi, key, device)
            return [device]
    return None


def _place(
    problem: Problem,
    answer: AggregateSolution,
    free: FreeIndex,
    decisions: Decisions,
    checkpoint: Checkpoint = carry_on,
) -> None:
    """Place the pods the IP serves, one-device pods first, as the IP allotted them; then several-device pods,
    whose co-location the IP relaxed; then let any other pod take what is left."""
    waiting: list[tuple[int, PodGroup, Demand]] = []
    single_first = sorted(range(len(problem.pod_groups)), key=lambda di: problem.pod_groups[di].demands[0].devices > 1)
    pools_of = [
        [pi for pi, pool in enumerate(problem.pools) if problem.usable(group, pool)] for group in problem.pod_groups
    ]
    usable = [set(pools) for pools in pools_of]
    quotas: dict[int, dict[int, int]] = defaultdict(dict)
    for (di, pi, _), count in answer.allocation.items():
        if pi in usable[di]:
            quotas[di][pi] = count
    one_node = _OneNode(free)
    for di in single_first:
        checkpoint()
        group = problem.pod_groups[di]
        pools = pools_of[di]
        quota = quotas[di]
        allotted = sorted(quota)
        for n, demand in enumerate(group.demands):
            taken = None
            if n < answer.served.get(di, 0):
                single = demand.devices == 1
                taken = (
                    _take_single(demand, free, quota, allotted, pools) if single else one_node.take(di, demand, pools)
                )
            if taken is None:
                waiting.append((di, group, demand))
            else:
                decisions.placements[demand.pod.name] = taken
    for di, _, demand in sorted(waiting, key=lambda gd: (-gd[1].weight, gd[2].pod.name)):
        taken = one_node.take(di, demand, pools_of[di])
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


def disaggregate(problem: Problem, answer: AggregateSolution, checkpoint: Checkpoint = carry_on) -> Decisions:
    """The answer's decisions on concrete GPUs and pods; `checkpoint` may abandon the work between its steps."""
    decisions = Decisions()
    free = _index(problem, answer, decisions, checkpoint)
    checkpoint()
    _place(problem, answer, free, decisions, checkpoint)
    repair(problem, decisions, checkpoint)
    checkpoint()
    _drop_idle_reconfigurations(problem, decisions)
    return decisions
