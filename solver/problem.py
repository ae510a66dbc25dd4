"""The planning problem in aggregated form: classes of alike GPUs, groups of alike pods, pools of capacity.

Scale comes from here. A *unit* is a class of interchangeable members (a GPU under the mixed strategy, a whole
node under the single strategy) that share model, free devices, eviction cost, eligibility signature and
eviction tier; the integer program decides only *how many* members of each unit are reconfigured and to which
maps, never which ones. A *pool* is the capacity that pods with the same eligibility can draw from; a *group*
is pods with the same request, eligibility and priority. The model grows with units, pools and groups, not
with GPUs and pods; `disaggregate` maps the answer back to concrete GPUs and pods.

Preemption rule: capacity freed by evicting pods of priority P (the unit's *tier*) may only serve pods of
priority above P, as the Kubernetes scheduler would only preempt lower-priority pods. Free instances of kept
GPUs and GPUs holding no pod serve anyone eligible (tier None).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from solver.catalog import GpuModel
from solver.demand import Demand, PriorityWeights, demands, rejection, single_key, weights_for
from solver.geometry import max_alone, maximal_maps
from solver.plan import PlanPolicy
from solver.snapshot import ClusterSnapshot, GpuState, NodeState

Capacity = tuple[tuple[str, int], ...]
PoolKey = tuple[frozenset[int], int | None]


@dataclass(frozen=True)
class Member:
    """A concrete thing a unit stands for: one GPU (mixed) or all GPUs of a node (single)."""

    node: str
    gpus: tuple[int, ...]


@dataclass(frozen=True)
class Target:
    """A reconfiguration target: the map every GPU of a member gets, and what it offers."""

    devices: tuple[tuple[str, int], ...]  # mig-devices map per GPU
    capacity: Capacity  # resource key -> devices per member
    fragmentation: int

    @property
    def as_current(self) -> tuple[tuple[str, int], ...]:
        """The map in `Unit.current`'s form: a member already holding it would not change at all."""
        return tuple(sorted(self.devices))


@dataclass
class Unit:
    kind: str
    model: GpuModel
    keep_capacity: Capacity
    keep_fragmentation: int
    signature: frozenset[int]
    tier: int | None
    reconfigurable: bool
    evict_pods: int
    evict_weight: int
    gpus_per_member: int
    current: tuple[tuple[str, int], ...] | None  # every member GPU's map, when they are all the same
    members: list[Member] = field(default_factory=list)

    @property
    def group_key(self) -> tuple[object, ...]:
        return (self.kind, self.model.key, self.gpus_per_member, self.signature, self.tier)

    @property
    def pool(self) -> PoolKey:
        return (self.signature, None)

    @property
    def reconfig_pool(self) -> PoolKey:
        return (self.signature, self.tier)


@dataclass
class ReconfigGroup:
    """Units whose reconfigured members are interchangeable: same model, signature and tier."""

    key: tuple[object, ...]
    targets: list[Target]
    units: list[int]
    pool: PoolKey


@dataclass
class PodGroup:
    resources: tuple[tuple[str, int], ...]
    eligibility: int
    priority: int
    weight: int
    demands: list[Demand]


@dataclass
class Problem:
    snapshot: ClusterSnapshot
    policy: PlanPolicy
    weights: PriorityWeights
    demands: list[Demand]
    eligibility_classes: list[tuple[object, ...]]
    units: list[Unit]
    reconfig_groups: list[ReconfigGroup]
    pod_groups: list[PodGroup]
    pools: list[PoolKey]

    def usable(self, group: PodGroup, pool: PoolKey) -> bool:
        signature, tier = pool
        return group.eligibility in signature and (tier is None or tier < group.priority)


def _free_capacity(gpu: GpuState) -> dict[str, int]:
    free: dict[str, int] = defaultdict(int)
    for inst in gpu.instances:
        if not inst.pod:
            free[gpu.gpu_model.profile(inst.profile).name] += 1
    return free


def _idle_slices(gpu: GpuState, keys: set[str], kind: str) -> int:
    """Compute slices neither held by a pod nor in a free instance some pending pod could use."""
    model = gpu.gpu_model
    useful = 0
    for inst in gpu.instances:
        profile = model.profile(inst.profile)
        key = profile.name if kind == "mixed" else single_key(model.key, profile.name)
        if inst.pod or key in keys:
            useful += profile.compute_slices
    return model.compute_slices - useful


def _mixed_targets(model: GpuModel, keys: set[str]) -> list[Target]:
    demanded = [p.name for p in model.profiles if p.name in keys]
    if not demanded:
        return []
    return [
        Target(
            devices=tuple(m.items()),
            capacity=tuple(sorted(m.items())),
            fragmentation=model.compute_slices - sum(model.profile(n).compute_slices * c for n, c in m.items()),
        )
        for m in maximal_maps(model, demanded)
    ]


def _single_targets(model: GpuModel, gpus: int, keys: set[str]) -> list[Target]:
    targets = []
    for profile in model.profiles:
        key = single_key(model.key, profile.name)
        if key not in keys:
            continue
        count = max_alone(model, profile.name)
        targets.append(
            Target(
                devices=((profile.name, count),),
                capacity=((key, count * gpus),),
                fragmentation=gpus * (model.compute_slices - profile.compute_slices * count),
            )
        )
    return targets


def targets_as_current(targets: list[Target]) -> set[tuple[tuple[str, int], ...]]:
    return {t.as_current for t in targets}


def _single_keep(node: NodeState) -> dict[str, int]:
    """Free devices of a single-strategy node; none unless every GPU holds one and the same profile (spec §3)."""
    profiles = {g.gpu_model.profile(i.profile).name for g in node.gpus for i in g.instances}
    models = {g.gpu_model.key for g in node.gpus}
    if len(profiles) != 1 or len(models) != 1 or any(not g.instances for g in node.gpus):
        return {}
    free = sum(1 for g in node.gpus for i in g.instances if not i.pod)
    return {single_key(models.pop(), profiles.pop()): free}


def _signature(node: NodeState, representative: dict[int, Demand]) -> frozenset[int]:
    """The eligibility classes whose pods the node accepts. A several-device request also needs the node's GPU
    models to have every profile it asks for, since all its devices must be on this node."""
    profiles = {p for g in node.gpus for p in g.gpu_model.profile_names}
    return frozenset(
        c
        for c, d in representative.items()
        if rejection(node, d) is None
        and (d.kind == "single" or d.devices == 1 or all(k in profiles for k, _ in d.resources))
    )


def _signatures(nodes: list[NodeState], representative: dict[int, Demand]) -> dict[str, frozenset[int]]:
    """Signatures of all nodes, computed once per distinct node "shape": only labels some pod's selector or
    affinity mentions can matter, so nodes differing only in others (hostname, …) share the answer."""
    keys = {k for d in representative.values() for k in d.pod.node_selector}
    keys |= {r.key for d in representative.values() for t in d.pod.node_affinity for r in t.match_expressions}
    cache: dict[tuple[object, ...], frozenset[int]] = {}
    result = {}
    for node in nodes:
        shape = (
            tuple(sorted((k, v) for k, v in node.labels.items() if k in keys)),
            tuple(node.taints),
            node.unschedulable,
            node.strategy,
            tuple(sorted({g.gpu_model.key for g in node.gpus})),
        )
        if shape not in cache:
            cache[shape] = _signature(node, representative)
        result[node.name] = cache[shape]
    return result


def build_problem(snapshot: ClusterSnapshot, policy: PlanPolicy) -> Problem:
    """Aggregate the snapshot into units, reconfiguration groups, pools and pod groups."""
    weights = weights_for(snapshot)
    pending = demands(snapshot, weights)
    classes: dict[tuple[object, ...], int] = {}
    for d in pending:
        classes.setdefault(d.eligibility_key, len(classes))
    representative = {classes[d.eligibility_key]: d for d in pending}
    keys = {k for d in pending for k, _ in d.resources}

    units: dict[tuple[object, ...], Unit] = {}
    target_cache: dict[tuple[str, str, int], list[Target]] = {}

    def targets_for(kind: str, model: GpuModel, gpus: int) -> list[Target]:
        key = (kind, model.key, gpus)
        if key not in target_cache:
            target_cache[key] = _mixed_targets(model, keys) if kind == "mixed" else _single_targets(model, gpus, keys)
        return target_cache[key]

    signatures = _signatures(snapshot.nodes, representative)

    def add(node: NodeState, gpus: list[GpuState], kind: str, keep: dict[str, int], frag: int) -> None:
        signature = signatures[node.name]
        holders = sorted({pod for g in gpus for pod in g.holders})
        running = [snapshot.running_pod(name) for name in holders]
        protected = not all(policy.may_evict(p) for p in running)
        model = gpus[0].gpu_model
        targets = targets_for(kind, model, len(gpus))
        maps = {tuple(sorted(g.mig_devices.items())) for g in gpus}
        reconfigurable = bool(targets) and not protected and len({g.gpu_model.key for g in gpus}) == 1
        # what cannot matter is left out of the unit, so that more members share one
        unit = Unit(
            kind=kind,
            model=model,
            keep_capacity=tuple(sorted((k, c) for k, c in keep.items() if c > 0 and k in keys)),
            keep_fragmentation=frag,
            signature=signature,
            tier=max((p.priority for p in running), default=None) if reconfigurable else None,
            reconfigurable=reconfigurable,
            evict_pods=len(holders) if reconfigurable else 0,
            evict_weight=sum(weights.factor(p.priority) for p in running) if reconfigurable else 0,
            gpus_per_member=len(gpus),
            current=next(iter(maps))
            if reconfigurable and len(maps) == 1 and maps <= targets_as_current(targets)
            else None,
        )
        key = (
            unit.kind, model.key, unit.keep_capacity, frag, signature, unit.tier, unit.reconfigurable,
            unit.evict_pods, unit.evict_weight, unit.gpus_per_member, unit.current,
        )  # fmt: skip
        units.setdefault(key, unit).members.append(Member(node=node.name, gpus=tuple(g.index for g in gpus)))

    for node in sorted(snapshot.nodes, key=lambda n: n.name):
        if not node.gpus:
            continue
        if node.strategy == "single":
            keep = _single_keep(node)
            frag = sum(_idle_slices(g, keys, "single") for g in node.gpus)
            add(node, sorted(node.gpus, key=lambda g: g.index), "single", keep, frag)
            continue
        for gpu in sorted(node.gpus, key=lambda g: g.index):
            add(node, [gpu], "mixed", _free_capacity(gpu), _idle_slices(gpu, keys, "mixed"))

    unit_list = list(units.values())
    groups: dict[tuple[object, ...], ReconfigGroup] = {}
    for index, unit in enumerate(unit_list):
        if not unit.reconfigurable:
            continue
        group = groups.get(unit.group_key)
        if group is None:
            targets = targets_for(unit.kind, unit.model, unit.gpus_per_member)
            group = groups[unit.group_key] = ReconfigGroup(unit.group_key, targets, [], unit.reconfig_pool)
        group.units.append(index)

    pod_groups: dict[tuple[object, ...], PodGroup] = {}
    for d in pending:
        gkey = (d.resources, classes[d.eligibility_key], d.pod.priority)
        if gkey not in pod_groups:
            pod_groups[gkey] = PodGroup(d.resources, classes[d.eligibility_key], d.pod.priority, d.weight, [])
        pod_groups[gkey].demands.append(d)

    pools = sorted(
        {u.pool for u in unit_list} | {g.pool for g in groups.values()},
        key=lambda p: (sorted(p[0]), -1 if p[1] is None else p[1]),
    )
    return Problem(
        snapshot=snapshot,
        policy=policy,
        weights=weights,
        demands=pending,
        eligibility_classes=list(classes),
        units=unit_list,
        reconfig_groups=list(groups.values()),
        pod_groups=sorted(pod_groups.values(), key=lambda g: (-g.weight, g.resources, g.eligibility, g.priority)),
        pools=pools,
    )
