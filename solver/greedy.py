"""The nos-style greedy planner: the baseline the optimal policy is measured against.

It mirrors nebuly-ai/nos (spec/peers.md §1): cluster-wide lacking devices, pods by priority then size, nodes by
name; on each node every idle GPU takes the geometry covering the most lacking devices, then pods are placed on
that node, and the node's changes are kept only if some pod fits. Lacking counts free devices only where the
sweep can still use them: this node's other GPUs and the nodes after it. Unlike nos, every tie is broken the same way
on every run, and a GPU with an instance held by a pod is never reconfigured (greedy never evicts).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from solver.decisions import Decisions, Device, GpuRef, free_devices, resource_key
from solver.demand import Demand, demands, key_compute_slices, rejection, single_key, weights_for
from solver.geometry import MigDevices, feasible_maps, size_order
from solver.plan import PlanPolicy
from solver.snapshot import ClusterSnapshot, GpuState, NodeState


@dataclass
class _State:
    """Targets chosen and devices given so far.

    Copied per node so that a node where no pod fits can be dropped as a whole, as nos reverts its fork.
    """

    targets: dict[GpuRef, MigDevices] = field(default_factory=dict)
    used: set[Device] = field(default_factory=set)
    placements: dict[str, list[Device]] = field(default_factory=dict)

    def fork(self) -> _State:
        return _State(dict(self.targets), set(self.used), {k: list(v) for k, v in self.placements.items()})


def _pod_order(demand: Demand) -> tuple[int, int, str]:
    """nos's order: priority first, then the smaller request (more pods fit), then name for determinism."""
    slices = sum(key_compute_slices(k) * c for k, c in demand.resources)
    return (-demand.pod.priority, slices, demand.pod.name)


def _sorted_gpus(node: NodeState) -> list[GpuState]:
    return sorted(node.gpus, key=lambda g: g.index)


def _free(state: _State, node: NodeState, gpu: GpuState) -> list[Device]:
    """The GPU's devices a pod could still be given under the state's target (or its current layout)."""
    devices = free_devices(node, gpu, state.targets.get((node.name, gpu.index)))
    return [d for d in devices if d not in state.used]


def _keys(node: NodeState, gpu: GpuState, profiles: Iterable[str]) -> Counter[str]:
    """Devices per resource key: how the device plugin advertises these profiles on this node."""
    return Counter(resource_key(node, gpu, p) for p in profiles)


def _supply(state: _State, node: NodeState, gpu: GpuState) -> Counter[str]:
    return _keys(node, gpu, (d.profile for d in _free(state, node, gpu)))


def _offer(node: NodeState, gpu: GpuState, devices: MigDevices) -> Counter[str]:
    return _keys(node, gpu, (p for p, c in devices.items() for _ in range(c)))


def _current_map(gpu: GpuState) -> MigDevices:
    return dict(Counter(i.profile for i in gpu.layout))


def _requested(pending: Iterable[Demand]) -> Counter[str]:
    total: Counter[str] = Counter()
    for demand in pending:
        for key, count in demand.resources:
            total[key] += count
    return total


def _score(offer: Counter[str], requested: Counter[str], elsewhere: Counter[str]) -> int:
    """Lacking devices the candidate covers. Lacking leaves out the supply being decided, so that keeping
    useful free devices scores what they are worth instead of zero."""
    return sum(min(c, max(0, requested[k] - elsewhere[k])) for k, c in offer.items())


def _within_cap(state: _State, cap: int | None, more: int) -> bool:
    return cap is None or len(state.targets) + more <= cap


def _choose_mixed(
    state: _State, node: NodeState, requested: Counter[str], later: Counter[str], cap: int | None
) -> None:
    """Give each idle GPU the first feasible map covering the most lacking devices, if that beats keeping it."""
    gpus = _sorted_gpus(node)
    supplies = {g.index: _supply(state, node, g) for g in gpus}
    for gpu in gpus:
        if gpu.holders:  # never delete a device a pod holds: greedy does not evict
            continue
        elsewhere = later + sum((c for i, c in supplies.items() if i != gpu.index), Counter[str]())
        best: MigDevices | None = None
        best_score = _score(supplies[gpu.index], requested, elsewhere)
        for devices in feasible_maps(gpu.gpu_model):
            score = _score(_offer(node, gpu, devices), requested, elsewhere)
            if score > best_score:
                best, best_score = devices, score
        if best is None or best == _current_map(gpu) or not _within_cap(state, cap, 1):
            continue
        state.targets[(node.name, gpu.index)] = best
        supplies[gpu.index] = _offer(node, gpu, best)


def _choose_single(
    state: _State, node: NodeState, requested: Counter[str], later: Counter[str], cap: int | None
) -> None:
    """Turn every GPU of an idle, one-model single-strategy node into one profile, if that beats keeping it."""
    gpus = _sorted_gpus(node)
    if not gpus or len({g.gpu_model.key for g in gpus}) != 1 or any(g.holders for g in gpus):
        return
    model = gpus[0].gpu_model
    keep = sum((_supply(state, node, g) for g in gpus), Counter[str]())
    best: MigDevices | None = None
    best_score = _score(keep, requested, later)
    for profile in size_order(model):
        count = max(m[profile.name] for m in feasible_maps(model, [profile.name]))
        offer = Counter({single_key(model.key, profile.name): count * len(gpus)})
        score = _score(offer, requested, later)
        if score > best_score:
            best, best_score = {profile.name: count}, score
    changed = [g for g in gpus if best is not None and _current_map(g) != best]
    if best is None or not changed or not _within_cap(state, cap, len(changed)):
        return
    for gpu in changed:
        state.targets[(node.name, gpu.index)] = dict(best)


def _pool(state: _State, node: NodeState) -> list[tuple[str, Device]]:
    """The node's free devices with their resource keys, lowest (GPU index, start) first."""
    pool = [(resource_key(node, g, d.profile), d) for g in _sorted_gpus(node) for d in _free(state, node, g)]
    return sorted(pool, key=lambda kd: (kd[1].gpu, kd[1].start))


def _place(state: _State, pool: list[tuple[str, Device]], demand: Demand) -> bool:
    """Give the pod every device it asks for from this node's pool, or nothing (a pod never spans nodes)."""
    chosen: list[tuple[str, Device]] = []
    for key, count in demand.resources:
        matching = [kd for kd in pool if kd[0] == key][:count]
        if len(matching) < count:
            return False
        chosen += matching
    for kd in chosen:
        pool.remove(kd)
        state.used.add(kd[1])
    state.placements[demand.pod.name] = [d for _, d in chosen]
    return True


def _later_supply(nodes: list[NodeState]) -> list[Counter[str]]:
    """For each node, the free devices of the nodes after it: the only supply the sweep can still use."""
    empty = _State()
    result = [Counter[str]() for _ in nodes]
    for i in range(len(nodes) - 2, -1, -1):
        after = nodes[i + 1]
        result[i] = result[i + 1] + sum((_supply(empty, after, g) for g in after.gpus), Counter[str]())
    return result


def greedy_decisions(snapshot: ClusterSnapshot, policy: PlanPolicy) -> Decisions:
    """Plan like nos, deterministically: reconfigure idle GPUs node by node and place pods where they fit."""
    pending = sorted(demands(snapshot, weights_for(snapshot)), key=_pod_order)
    nodes = sorted(snapshot.nodes, key=lambda n: n.name)
    state = _State()
    for node, later in zip(nodes, _later_supply(nodes), strict=True):
        unplaced = [d for d in pending if d.pod.name not in state.placements]
        if not unplaced:
            break
        eligible = [d for d in unplaced if rejection(node, d) is None]
        if not eligible:  # nothing could be placed here, so anything chosen would be reverted
            continue
        fork = state.fork()
        choose = _choose_single if node.strategy == "single" else _choose_mixed
        choose(fork, node, _requested(unplaced), later, policy.max_reconfigurations)
        pool = _pool(fork, node)
        placed = [d for d in eligible if _place(fork, pool, d)]
        if placed:
            state = fork
    return Decisions(targets=dict(state.targets), placements=dict(state.placements))
