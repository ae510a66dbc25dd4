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

from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from solver.catalog import GpuModel, load_catalog
from solver.decisions import Device, advertises_nothing, free_devices, resource_key
from solver.demand import Demand, PriorityWeights, demands, rejection, single_key, weights_for
from solver.explain import Census, census
from solver.geometry import max_alone
from solver.plan import GpuPlan, PlanPolicy, WrittenLines
from solver.scope import PlanScope, scoped
from solver.snapshot import ClusterSnapshot, GpuState, LayoutShape, NodeState, PendingPod

if TYPE_CHECKING:
    from solver.repair import RepairContext

Capacity = tuple[tuple[str, int], ...]
MapKey = tuple[tuple[str, int], ...]  # a mig-devices map as sorted (profile, count) pairs
PoolKey = tuple[frozenset[int], int | None]


class Member(NamedTuple):
    """A concrete thing a unit stands for: one GPU (mixed) or all GPUs of a node (single). A named tuple: a
    cluster has one per GPU, and tuples are made several times faster than frozen dataclasses."""

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


class UnitKey(NamedTuple):
    """What makes members interchangeable: members with equal keys are one unit (every field the model reads)."""

    kind: str  # "mixed" (a member is one GPU) or "single" (a member is a whole node)
    model: str  # GPU model key
    keep_capacity: Capacity  # free devices a kept member offers
    keep_fragmentation: int  # idle slices of a kept member
    signature: frozenset[int]  # eligibility classes the member's node accepts
    tier: int | None  # priority of the pods a reconfiguration evicts (None: it evicts none, or is impossible)
    reconfigurable: bool
    evict_pods: int
    evict_weight: int
    gpus_per_member: int
    current: tuple[tuple[str, int], ...] | None  # the map every member GPU holds, when it is one of the targets


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

    @classmethod
    def of(cls, key: UnitKey, model: GpuModel) -> Unit:
        """The unit a key describes, with no members yet."""
        return cls(key.kind, model, *key[2:])

    @property
    def key(self) -> UnitKey:
        return UnitKey(
            self.kind, self.model.key, self.keep_capacity, self.keep_fragmentation, self.signature, self.tier,
            self.reconfigurable, self.evict_pods, self.evict_weight, self.gpus_per_member, self.current,
        )  # fmt: skip

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
    expected: dict[str, int] = field(default_factory=dict)  # forecast devices per resource key (proactive)
    # running pod -> whether the policy may evict it, its priority, its weight (what aggregation read of each)
    holder_facts: dict[str, tuple[bool, int, int]] = field(default_factory=dict, repr=False)
    _census: Census | None = field(default=None, repr=False)
    _gpus: dict[tuple[str, int], tuple[NodeState, GpuState]] | None = field(default=None, repr=False)
    _keys: frozenset[str] | None = field(default=None, repr=False)
    _wanted: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict, repr=False)
    _kept_fragmentation: int | None = field(default=None, repr=False)
    _devices: dict[tuple[object, ...], tuple[tuple[str, Device], ...]] = field(default_factory=dict, repr=False)
    _kept_lines: dict[tuple[str, int], GpuPlan] | None = field(default=None, repr=False)
    kept_lines_json: WrittenLines | None = field(default=None, repr=False)  # made by `write_kept_lines_json`
    _kept_offers: dict[int, dict[str, dict[str, list[Device]]]] | None = field(default=None, repr=False)
    _group_of_pod: dict[str, int] | None = field(default=None, repr=False)
    repair_context: RepairContext | None = field(default=None, repr=False)  # `solver.repair` makes and reads it

    def gpu_index(self) -> dict[tuple[str, int], tuple[NodeState, GpuState]]:
        """Every GPU by (node name, index), with its node."""
        if self._gpus is None:
            self._gpus = {(n.name, g.index): (n, g) for n in self.snapshot.nodes for g in n.gpus}
        return self._gpus

    @property
    def keys(self) -> frozenset[str]:
        """Resource keys some pending pod asks for, or the forecast expects: capacity of any other key is
        fragmentation."""
        if self._keys is None:
            self._keys = frozenset(k for d in self.demands for k, _ in d.resources) | frozenset(self.expected)
        return self._keys

    def wanted_profiles(self, strategy: str, model_key: str) -> frozenset[str]:
        """The profiles of the model whose devices some pending pod could use on a node of this strategy."""
        key = (strategy, model_key)
        if key not in self._wanted:
            model = load_catalog().model(model_key)
            self._wanted[key] = frozenset(
                p for p in model.profile_names if (p if strategy == "mixed" else single_key(model_key, p)) in self.keys
            )
        return self._wanted[key]

    def kept_fragmentation(self, node: NodeState, gpu: GpuState) -> int:
        """Idle compute slices of the GPU if it keeps its map (what `Unit.keep_fragmentation` adds up)."""
        return _idle_slices(gpu, self.keys, node.strategy)

    def kept_fragmentation_total(self) -> int:
        """Idle compute slices of the whole cluster if no GPU changes."""
        if self._kept_fragmentation is None:
            self._kept_fragmentation = sum(u.keep_fragmentation * len(u.members) for u in self.units)
        return self._kept_fragmentation

    def keyed_devices(
        self, node: NodeState, gpu: GpuState, target: dict[str, int] | None
    ) -> tuple[tuple[str, Device], ...]:
        """`free_devices` with each device's resource key; remembered, as every round of a plan asks again."""
        key = (node.name, gpu.index, None if target is None else tuple(sorted(target.items())))
        found = self._devices.get(key)
        if found is None:
            found = self._devices[key] = tuple(
                (resource_key(node, gpu, d.profile), d) for d in free_devices(node, gpu, target)
            )
        return found

    def group_of_pod(self) -> dict[str, int]:
        """Each pending pod's group (its index in `pod_groups`), by pod name: made once per problem."""
        if self._group_of_pod is None:
            self._group_of_pod = {d.pod.name: gi for gi, group in enumerate(self.pod_groups) for d in group.demands}
        return self._group_of_pod

    def kept_offers(self) -> dict[int, dict[str, dict[str, list[Device]]]]:
        """Per unit offering devices some pending pod asks for, what its members offer when none changes: devices
        by resource key and node, in member order (what disaggregation indexes for each unit it leaves as it
        is). The same whatever a plan decides, so made once per problem, by the optimal policy while CP-SAT
        solves; read-only: the index copies it."""
        if self._kept_offers is None:
            offers: dict[int, dict[str, dict[str, list[Device]]]] = {}
            gpus = self.gpu_index()
            for ui, unit in enumerate(self.units):
                if unit.keep_capacity:
                    offers[ui] = self._unit_offers(unit, gpus)
            self._kept_offers = offers
        return self._kept_offers

    def _unit_offers(
        self, unit: Unit, gpus: dict[tuple[str, int], tuple[NodeState, GpuState]]
    ) -> dict[str, dict[str, list[Device]]]:
        by_key: dict[str, dict[str, list[Device]]] = {}
        for member in unit.members:
            node, first = gpus[member.node, member.gpus[0]]
            if advertises_nothing(node, {}):
                continue  # a kept single-strategy node holding several profiles advertises no device
            # the node's order, as offered (a mixed-strategy member is one GPU: no need to look through the node's)
            member_gpus = [first] if len(member.gpus) == 1 else [g for g in node.gpus if g.index in member.gpus]
            for gpu in member_gpus:
                for key, device in self.keyed_devices(node, gpu, None):
                    by_key.setdefault(key, {}).setdefault(node.name, []).append(device)
        return by_key

    def kept_lines(self) -> dict[tuple[str, int], GpuPlan]:
        """Every GPU's line of a plan that keeps its map, by (node, index) in a plan's order (node name, then
        index): the same whatever a plan decides, so written once per problem (the optimal policy writes them
        while CP-SAT solves)."""
        if self._kept_lines is None:
            shared: dict[tuple[object, ...], tuple[dict[str, int], list[tuple[str, int]]]] = {}
            self._kept_lines = {
                (n.name, g.index): _kept_line(n, g, shared)
                for n in sorted(self.snapshot.nodes, key=lambda n: n.name)
                for g in sorted(n.gpus, key=lambda g: g.index)
            }
        return self._kept_lines

    def census(self) -> Census:
        """What unplaced-pod reasons read of the cluster, counted once and shared by every plan of this problem."""
        if self._census is None:
            self._census = census(self.snapshot, self.policy, self.demands, self.holder_facts)
        return self._census

    def usable(self, group: PodGroup, pool: PoolKey) -> bool:
        signature, tier = pool
        return group.eligibility in signature and (tier is None or tier < group.priority)


def _kept_line(
    node: NodeState, gpu: GpuState, shared: dict[tuple[object, ...], tuple[dict[str, int], list[tuple[str, int]]]]
) -> GpuPlan:
    """The GPU's line if it keeps its map. GPUs of one layout share its map and layout (no reader changes a line's
    maps or layout): 160,000 fewer objects at 10,000 nodes, and the plan's JSON writes their lines alike once
    (`solver.plan_json`)."""
    facts = (gpu.mig_devices_items, gpu.layout_pairs)
    found = shared.get(facts)
    if found is None:
        found = shared[facts] = (dict(facts[0]), list(facts[1]))
    devices, layout = found
    return GpuPlan.kept(node.name, gpu.index, gpu.gpu_model.key, devices, layout)


def _free_capacity(gpu: GpuState) -> dict[str, int]:
    free: dict[str, int] = defaultdict(int)
    for inst in gpu.instances:
        if not inst.pod:
            free[gpu.gpu_model.profile(inst.profile).name] += 1
    return free


def _idle_slices(gpu: GpuState, keys: Collection[str], kind: str) -> int:
    """Compute slices neither held by a pod nor in a free instance some pending pod could use."""
    model = gpu.gpu_model
    useful = 0
    for inst in gpu.instances:
        profile = model.profile(inst.profile)
        key = profile.name if kind == "mixed" else single_key(model.key, profile.name)
        if inst.pod or key in keys:
            useful += profile.compute_slices
    return model.compute_slices - useful


def _layout_facts(gpu: GpuState, keys: Collection[str]) -> tuple[Capacity, int, MapKey]:
    """A mixed-strategy GPU's free devices some pending pod asks for, its idle slices and its map, in one pass:
    what `_free_capacity`, `_idle_slices` and `mig_devices_items` give, sorted as a unit key holds them."""
    model = gpu.gpu_model
    free: dict[str, int] = {}
    counts: dict[str, int] = {}
    useful = 0
    for inst in gpu.instances:
        profile = model.profile(inst.profile)
        name = profile.name
        counts[name] = counts.get(name, 0) + 1
        if inst.pod:
            useful += profile.compute_slices
        elif name in keys:
            useful += profile.compute_slices
            free[name] = free.get(name, 0) + 1
    return tuple(sorted(free.items())), model.compute_slices - useful, tuple(sorted(counts.items()))


def _mixed_targets(model: GpuModel, keys: set[str], scope: PlanScope) -> list[Target]:
    """The scope's candidate maps for the demanded profiles; instances no pending pod asks for (an allowed
    geometry may hold some) offer nothing and count as fragmentation."""
    demanded = [p.name for p in model.profiles if p.name in keys]
    if not demanded:
        return []
    targets = []
    for m in scope.target_maps(model, demanded):
        offered = sorted((n, c) for n, c in m.items() if n in keys)
        targets.append(
            Target(
                devices=tuple(m.items()),
                capacity=tuple(offered),
                fragmentation=model.compute_slices - sum(model.profile(n).compute_slices * c for n, c in offered),
            )
        )
    return targets


def _single_targets(model: GpuModel, gpus: int, keys: set[str], scope: PlanScope) -> list[Target]:
    targets = []
    for profile in model.profiles:
        key = single_key(model.key, profile.name)
        if key not in keys:
            continue
        count = max_alone(model, profile.name)
        if not scope.permits(model, {profile.name: count}):
            continue
        targets.append(
            Target(
                devices=((profile.name, count),),
                capacity=((key, count * gpus),),
                fragmentation=gpus * (model.compute_slices - profile.compute_slices * count),
            )
        )
    return targets


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
    """Aggregate the snapshot: pending data, then units, reconfiguration groups, pod groups and pools."""
    snapshot = scoped(snapshot, policy.scope)
    data = _pending_data(snapshot)
    targets = _TargetCache(data.keys, policy.scope)
    signatures = _signatures(snapshot.nodes, data.representative)
    factory = _UnitFactory(snapshot, policy, data, targets, signatures)
    units = _units(snapshot, factory)
    groups = _reconfig_groups(units, targets)
    return Problem(
        snapshot=snapshot,
        policy=policy,
        weights=data.weights,
        demands=data.demands,
        eligibility_classes=list(data.classes),
        units=units,
        reconfig_groups=groups,
        pod_groups=_pod_groups(data),
        pools=_pools(units, groups),
        expected=data.expected,
        holder_facts=factory.holders,
    )


# --- data: what the pending pods contribute ---------------------------------------------------------------------


@dataclass(frozen=True)
class _PendingData:
    """The pending pods as the aggregation reads them: demands, eligibility classes, resource keys asked for."""

    weights: PriorityWeights
    demands: list[Demand]
    classes: dict[tuple[object, ...], int]  # eligibility key -> class number, in order of first appearance
    representative: dict[int, Demand]  # class number -> one demand of it (the last), to test nodes against
    keys: set[str]  # resource keys some pending pod asks for or the forecast expects: others are fragmentation
    expected: dict[str, int]  # forecast devices per resource key


def _pending_data(snapshot: ClusterSnapshot) -> _PendingData:
    weights = weights_for(snapshot)
    pending = demands(snapshot, weights)
    expected = expected_devices(snapshot)
    classes: dict[tuple[object, ...], int] = {}
    for d in pending:
        classes.setdefault(d.eligibility_key, len(classes))
    return _PendingData(
        weights=weights,
        demands=pending,
        classes=classes,
        representative={classes[d.eligibility_key]: d for d in pending},
        keys={k for d in pending for k, _ in d.resources} | set(expected),
        expected=expected,
    )


def expected_devices(snapshot: ClusterSnapshot) -> dict[str, int]:
    """The forecast as devices per mixed-strategy resource key (what arriving pods would ask for)."""
    expected: Counter[str] = Counter()
    for demand in snapshot.forecast:
        for profile, count in PendingPod(name="forecast", requests=demand.requests).mig_requests.items():
            expected[profile] += count * demand.count
    return dict(expected)


# --- units: classes of interchangeable members ------------------------------------------------------------------


class _TargetCache:
    """Targets depend only on strategy, model and member size; many members share them, so each is built once."""

    def __init__(self, keys: set[str], scope: PlanScope) -> None:
        self.keys = keys
        self.scope = scope
        self._cache: dict[tuple[str, str, int], list[Target]] = {}
        self._maps: dict[tuple[str, str, int], frozenset[tuple[tuple[str, int], ...]]] = {}

    def maps(self, kind: str, model: GpuModel, gpus: int) -> frozenset[tuple[tuple[str, int], ...]]:
        """The targets' maps in `Unit.current`'s form."""
        key = (kind, model.key, gpus)
        if key not in self._maps:
            self._maps[key] = frozenset(t.as_current for t in self.get(kind, model, gpus))
        return self._maps[key]

    def get(self, kind: str, model: GpuModel, gpus: int) -> list[Target]:
        key = (kind, model.key, gpus)
        if key not in self._cache:
            if kind == "mixed":
                self._cache[key] = _mixed_targets(model, self.keys, self.scope)
            else:
                self._cache[key] = _single_targets(model, gpus, self.keys, self.scope)
        return self._cache[key]


@dataclass(frozen=True)
class _MemberState:
    """One member as found in the snapshot, before it is classed into a unit."""

    node: NodeState
    gpus: list[GpuState]
    kind: str
    keep: dict[str, int]  # free devices by resource key, kept if the member is not reconfigured
    fragmentation: int  # idle slices if the member is kept


class _LayoutFacts(NamedTuple):
    """What a mixed-strategy GPU's unit key takes from its model and layout alone."""

    model: str  # the model's catalog key
    keep_capacity: Capacity
    fragmentation: int
    current_target: MapKey | None  # its map, when that is one of the model's targets
    has_targets: bool  # whether the model has any map to be reconfigured to


@dataclass(frozen=True)
class _UnitFactory:
    """Describes a member as a unit; what cannot matter is left out, so that more members share one unit."""

    snapshot: ClusterSnapshot
    policy: PlanPolicy
    data: _PendingData
    targets: _TargetCache
    signatures: dict[str, frozenset[int]]
    holders: dict[str, tuple[bool, int, int]] = field(init=False)  # running pod -> `_holder`'s answer

    def __post_init__(self) -> None:
        """Every running pod the snapshot describes as a GPU's key reads it, in one pass (`_holder`)."""
        may_evict, factor = self.policy.may_evict, self.data.weights.factor
        facts = {p.name: (may_evict(p), p.priority, factor(p.priority)) for p in self.snapshot.running}
        object.__setattr__(self, "holders", facts)  # frozen: set once, as the factory is made

    def mixed_keys(
        self, node: NodeState, gpus: list[GpuState], layouts: dict[LayoutShape, _LayoutFacts]
    ) -> list[UnitKey]:
        """`unit(...).key` of each mixed-strategy GPU of the node, without building units; what follows from the
        model and the layout alone is remembered in `layouts` per layout and which instances are held (`_layout`),
        and what a holder contributes per pod (`_holder`). One call per node, and plain loops: this runs for every
        GPU of the cluster."""
        signature = self.signatures[node.name]
        managed = node.unmanaged is None
        known = self.holders
        keys = []
        for gpu in gpus:
            shape = gpu.layout_shape
            facts = layouts.get(shape) or self._layout(shape, gpu, layouts)
            reconfigurable = managed and facts.has_targets
            tier: int | None = None
            weight = 0
            names = gpu.holders
            if reconfigurable:
                for name in names:
                    evictable, priority, factor = known.get(name) or self._holder(name)
                    if not evictable:
                        reconfigurable = False
                        break
                    if tier is None or priority > tier:
                        tier = priority
                    weight += factor
            if reconfigurable:
                key = UnitKey("mixed", facts.model, facts.keep_capacity, facts.fragmentation, signature, tier, True,
                              len(names), weight, 1, facts.current_target)  # fmt: skip
            else:
                key = UnitKey("mixed", facts.model, facts.keep_capacity, facts.fragmentation, signature, None, False,
                              0, 0, 1, None)  # fmt: skip
            keys.append(key)
        return keys

    def _layout(self, shape: LayoutShape, gpu: GpuState, layouts: dict[LayoutShape, _LayoutFacts]) -> _LayoutFacts:
        keep, fragmentation, current = _layout_facts(gpu, self.data.keys)
        model = gpu.gpu_model
        facts = layouts[shape] = _LayoutFacts(
            model.key, keep, fragmentation, current if current in self.targets.maps("mixed", model, 1) else None,
            bool(self.targets.get("mixed", model, 1)),
        )  # fmt: skip
        return facts

    def _holder(self, name: str) -> tuple[bool, int, int]:
        """A running pod as a GPU's key reads it: whether the policy may evict it, its priority and its weight."""
        pod = self.snapshot.running_pod(name)
        found = self.holders[name] = (self.policy.may_evict(pod), pod.priority, self.data.weights.factor(pod.priority))
        return found

    def unit(self, member: _MemberState) -> Unit:
        gpus = member.gpus
        holders = sorted({pod for g in gpus for pod in g.holders})
        running = [self.snapshot.running_pod(name) for name in holders]
        model = gpus[0].gpu_model
        targets = self.targets.get(member.kind, model, len(gpus))
        maps = self.targets.maps(member.kind, model, len(gpus))
        protected = not all(self.policy.may_evict(p) for p in running)
        one_model = len({g.gpu_model.key for g in gpus}) == 1
        reconfigurable = member.node.unmanaged is None and bool(targets) and not protected and one_model
        return Unit(
            kind=member.kind,
            model=model,
            keep_capacity=tuple(sorted((k, c) for k, c in member.keep.items() if c > 0 and k in self.data.keys)),
            keep_fragmentation=member.fragmentation,
            signature=self.signatures[member.node.name],
            tier=max((p.priority for p in running), default=None) if reconfigurable else None,
            reconfigurable=reconfigurable,
            evict_pods=len(holders) if reconfigurable else 0,
            evict_weight=sum(self.data.weights.factor(p.priority) for p in running) if reconfigurable else 0,
            gpus_per_member=len(gpus),
            current=_common_map(gpus, maps) if reconfigurable else None,
        )


def _common_map(
    gpus: list[GpuState], targets: frozenset[tuple[tuple[str, int], ...]]
) -> tuple[tuple[str, int], ...] | None:
    """The map all GPUs hold, when they hold one and the same map that is also a target; else None."""
    maps = {tuple(sorted(g.mig_devices_items)) for g in gpus}
    return next(iter(maps)) if len(maps) == 1 and maps <= targets else None


def _units(snapshot: ClusterSnapshot, factory: _UnitFactory) -> list[Unit]:
    """Members classed into units by `Unit.key`, units in order of their first member.

    A mixed-strategy GPU's key is computed directly (`_UnitFactory.mixed_keys`, what `unit` would give), and the
    unit made from that key for the first member with it: clusters have tens of thousands of GPUs and few units."""
    units: dict[UnitKey, Unit] = {}
    layouts: dict[LayoutShape, _LayoutFacts] = {}
    for node in sorted(snapshot.nodes, key=lambda n: n.name):
        if not node.gpus:
            continue
        gpus = sorted(node.gpus, key=lambda g: g.index)
        if node.strategy == "single":
            fragmentation = sum(_idle_slices(g, factory.data.keys, "single") for g in node.gpus)
            unit = factory.unit(_MemberState(node, gpus, "single", _single_keep(node), fragmentation))
            units.setdefault(unit.key, unit).members.append(Member(node=node.name, gpus=tuple(g.index for g in gpus)))
            continue
        for gpu, key in zip(gpus, factory.mixed_keys(node, gpus, layouts), strict=True):
            unit = units.get(key)  # type: ignore[assignment]
            if unit is None:  # the key holds every field a unit has (tests/test_solver_sections.py checks it)
                unit = units[key] = Unit.of(key, gpu.gpu_model)
            unit.members.append(Member(node=node.name, gpus=(gpu.index,)))
    return list(units.values())


# --- reconfiguration groups, pod groups, pools ------------------------------------------------------------------


def _reconfig_groups(units: list[Unit], targets: _TargetCache) -> list[ReconfigGroup]:
    """Reconfigurable units by `Unit.group_key`, groups in order of their first unit."""
    groups: dict[tuple[object, ...], ReconfigGroup] = {}
    for index, unit in enumerate(units):
        if not unit.reconfigurable:
            continue
        group = groups.get(unit.group_key)
        if group is None:
            choices = targets.get(unit.kind, unit.model, unit.gpus_per_member)
            group = groups[unit.group_key] = ReconfigGroup(unit.group_key, choices, [], unit.reconfig_pool)
        group.units.append(index)
    return list(groups.values())


def _pod_groups(data: _PendingData) -> list[PodGroup]:
    """Pending pods with the same request, eligibility class and priority; heaviest first."""
    groups: dict[tuple[object, ...], PodGroup] = {}
    for d in data.demands:
        eligibility = data.classes[d.eligibility_key]
        key = (d.resources, eligibility, d.pod.priority)
        if key not in groups:
            groups[key] = PodGroup(d.resources, eligibility, d.pod.priority, d.weight, [])
        groups[key].demands.append(d)
    return sorted(groups.values(), key=lambda g: (-g.weight, g.resources, g.eligibility, g.priority))


def _pools(units: list[Unit], groups: list[ReconfigGroup]) -> list[PoolKey]:
    """Every pool some unit keeps or some group reconfigures into, in a stable order (untiered first per signature)."""
    return sorted(
        {u.pool for u in units} | {g.pool for g in groups},
        key=lambda p: (sorted(p[0]), -1 if p[1] is None else p[1]),
    )
