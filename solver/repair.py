"""Place the several-device pods the aggregated answer could not co-locate, by re-targeting spare GPUs of a node.

The integer program relaxes co-location (a pod's devices may come from several members), so disaggregation can
strand a several-device pod. For each such pod (pod groups heaviest first) and each node that accepts it and
has all its profiles (name order), the pod gets the node's free devices it may use plus GPUs that serve no pod
in the plan and whose holders it may displace (lower priority, evictable), re-targeted to the maps that best
cover what is still missing, within the policy caps. Under the single strategy a node's GPUs change together.

Every node is first tried without evicting anyone the plan does not already evict (only GPUs nobody holds are
re-targeted, only devices of GPUs the plan already rebuilds for a pod are taken); only when no node takes the
pod so are holders displaced. Disruption ranks right after served demand, so a repair that evicts where another
node would not makes the plan worse than it needs to be.

The scan is indexed so that it stays near-linear in nodes plus stranded pods: a node's answer for a pod depends
only on the node's own state, the pod's request, filters and priority, and the caps, which only tighten as
repairs succeed; so pods of one group resume each pass's scan where it last succeeded (`_Scan`), retrying the
nodes changed since, and a group whose pod found no node skips the rest of its pods.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from itertools import compress
from typing import NamedTuple

from solver.catalog import GpuModel, load_catalog
from solver.checkpoint import Checkpoint, carry_on
from solver.decisions import Decisions, Device, GpuRef, single_profile
from solver.demand import Demand, rejection
from solver.geometry import max_alone, maximal_maps
from solver.problem import PodGroup, Problem
from solver.relocation import NOBODY, Movers, RelocationFacts
from solver.scope import PlanScope
from solver.snapshot import GpuState, NodeState

_CHECKPOINT_NODES = 64
"""Nodes one pod's scan tries between two checkpoints (a pass may try thousands)."""

_RELOCATE = 2
"""The pass between the eviction-free one (False) and the evicting one (True): eviction-free, once one-device pods
of the plan have moved off the node (`solver.relocation`)."""


def repair(problem: Problem, decisions: Decisions, checkpoint: Checkpoint = carry_on) -> None:
    """Place what can be placed of the stranded several-device pods (recorded in `decisions`).

    Preferring nodes where nobody is evicted can cost served demand: a pod sent to such a node may take what a
    later pod could use nowhere else. So when the careful scan left a pod out, the plain name-order scan runs too,
    and the careful result stands unless the plain one serves more, or as much with fewer evictions
    (`_Attempt.score`, on the nodes either touched). When the careful scan placed every pod, nothing serves more;
    evicting more than the plain scan would then takes a later pod being pushed off an eviction-free node,
    which the property test (`tests/test_repair_index.py`) has not found."""
    stranded = _stranded(problem, decisions)
    if not stranded:
        return
    context = repair_context(problem)
    initial, free = _Remembered(), _EvictionFree(decisions)
    careful = _Attempt(problem, decisions, context, initial, free, (False, _RELOCATE, True), checkpoint)
    chosen = careful
    careful.run(stranded, context.nodes)
    if careful.missed:
        plain = _Attempt(problem, decisions, context, initial, free, (True,), checkpoint)
        plain.run(stranded, context.nodes)
        touched = [*careful.touched.values(), *plain.touched.values()]
        chosen = max(careful, plain, key=lambda attempt: attempt.score(touched))  # the careful one on a tie
    decisions.targets, decisions.placements = chosen.decisions.targets, chosen.decisions.placements


class RepairContext:
    """What repairs read that no plan changes: the nodes in name order with the candidates of each several-device
    pod group (`_NodeIndex`), each GPU's floor and tier (`_Floors`), and what moving one-device pods reads
    (`RelocationFacts`). Made once per problem and shared by every disaggregation of it (the optimal policy's
    speculative ones and the final one, on two threads: both only fill caches, with the same values whoever
    fills them); `prime` fills the candidates and the relocation facts ahead, as the optimal policy does while
    CP-SAT solves."""

    def __init__(self, problem: Problem) -> None:
        self._groups = [g for g in problem.pod_groups if g.demands[0].devices > 1]
        self.nodes = _NodeIndex(problem, [g.demands[0] for g in self._groups])
        self.floors = _Floors(problem)
        self.relocation = RelocationFacts(problem)

    def prime(self) -> None:
        for group in self._groups:
            self.nodes.candidates(group)
        if self._groups:  # only several-device pods are repaired
            self.relocation.prime()


def repair_context(problem: Problem) -> RepairContext:
    """The problem's `RepairContext`, made on first use."""
    if problem.repair_context is None:
        problem.repair_context = RepairContext(problem)
    return problem.repair_context


def _stranded(problem: Problem, decisions: Decisions) -> list[tuple[PodGroup, list[Demand]]]:
    """Several-device pod groups with the pods the plan has not placed, groups in order (heaviest first)."""
    stranded = [
        (group, [d for d in group.demands if d.pod.name not in decisions.placements])
        for group in problem.pod_groups
        if group.demands[0].devices > 1
    ]
    return [(group, pods) for group, pods in stranded if pods]


def _devices_by_node(placements: dict[str, list[Device]]) -> defaultdict[str, set[Device]]:
    """The devices the placements use, per node."""
    used: defaultdict[str, set[Device]] = defaultdict(set)
    for devices in placements.values():
        for device in devices:
            used[device.node].add(device)
    return used


class _Attempt:
    """One scan over the stranded pods, on its own copy of the decisions: each pod tries the `passes` in turn
    (False: no new evictions; `_RELOCATE`: no new evictions once one-device pods of the plan have moved off the
    node; True: holders may be displaced), each pass every candidate node in name order. `checkpoint` may abandon
    the scan between pods and every `_CHECKPOINT_NODES` nodes a pod tries."""

    def __init__(
        self,
        problem: Problem,
        decisions: Decisions,
        context: RepairContext,
        initial: _Remembered,
        free: _EvictionFree,
        passes: tuple[int, ...],
        checkpoint: Checkpoint = carry_on,
    ) -> None:
        self.problem, self.passes, self.checkpoint = problem, passes, checkpoint
        self.floors = floors = context.floors
        self.decisions = Decisions(dict(decisions.targets), dict(decisions.placements))  # values are replaced
        # the plan's devices by node: `free` was made from these decisions, so its index is theirs, copied
        self.used = defaultdict(set, {name: set(devices) for name, devices in free.used.items()})
        self.caps = _Caps(problem, self.decisions)
        self.movers = Movers(problem, self.decisions, self.used, floors.tier, context.relocation, checkpoint)
        self.bounds = _Bounds(problem, self.decisions, self.used, floors, initial, free, self.movers)
        self.placed: list[Demand] = []
        self.touched: dict[str, NodeState] = {}
        self.missed = False  # some pod found no node

    def run(self, stranded: list[tuple[PodGroup, list[Demand]]], nodes: _NodeIndex) -> None:
        for group, pods in stranded:
            candidates = nodes.candidates(group)
            scans = {evict: _Scan(len(candidates)) for evict in self.passes}
            for demand in pods:
                self.checkpoint()
                if not any(self.place(demand, candidates, scans, evict) for evict in self.passes):
                    self.missed = True
                    break  # no node took this pod; its group's other pods are alike and would fare the same

    def place(self, demand: Demand, candidates: list[NodeState], scans: dict[int, _Scan], evict: int) -> bool:
        """Whether some node took the pod in this pass (`evict`: whether holders may be displaced, or
        `_RELOCATE`); the scans learn where. The checkpoint is called every `_CHECKPOINT_NODES` nodes tried."""
        scan = scans[evict]
        for tried, position in enumerate(scan.order()):
            if tried % _CHECKPOINT_NODES == _CHECKPOINT_NODES - 1:
                self.checkpoint()
            node = candidates[position]
            if not self.bounds.may_fit(node, demand, evict):
                continue
            changing = self.caps.changing_count
            moved_to: list[NodeState] = []
            if evict == _RELOCATE:
                taken, moved_to = self._relocate(node, demand)
            else:
                repair_on = _repair_single_on if node.strategy == "single" else _repair_on
                taken = repair_on(
                    self.problem, self.decisions, node, demand, self.used[node.name], self.caps, self.floors,
                    evict=bool(evict),
                )  # fmt: skip
            if taken:
                self.used[node.name].update(taken)
                self.caps.record(node, self.decisions)
                self.bounds.forget(node)
                self.placed.append(demand)
                self.touched[node.name] = node
                for moved in moved_to:  # they hold more pods now: their bounds are made again
                    self.bounds.forget(moved)
                    self.touched[moved.name] = moved
                # a single-strategy node re-targeted back to its current maps may lift a cap: look again
                lifted = self.caps.changing_count < changing
                for other in scans.values():
                    if lifted:
                        other.restart()
                    else:
                        other.changed(position, other is scan)
                return True
        scan.exhausted()
        return False

    def _relocate(self, node: NodeState, demand: Demand) -> tuple[list[Device], list[NodeState]]:
        """The pod's devices on this node once the plan's one-device pods there have moved where they may (the
        moves and targets recorded in the decisions), and the nodes they moved to; nothing when some pod in the
        way has nowhere to go. Only the pods on devices the pod takes or on GPUs re-targeted for it move."""
        used = self.used[node.name]
        movable = {d for d in used if self.movers.movable(d)}
        if not movable:
            return [], []
        targets, name = self.decisions.targets, node.name
        before = {g.index: targets.get((name, g.index)) for g in node.gpus}
        taken = _repair_on(
            self.problem, self.decisions, node, demand, used - movable, self.caps, self.floors, evict=False
        )
        if not taken:
            return [], []
        rebuilt = {i for i, target in before.items() if targets.get((name, i)) is not target}
        in_the_way = sorted(d for d in movable if d in taken or d.gpu in rebuilt)
        moves = self.movers.destinations(in_the_way, away_from=name)
        if moves is None:
            for i, target in before.items():
                if target is None:
                    targets.pop((name, i), None)
                else:
                    targets[name, i] = target
            del self.decisions.placements[demand.pod.name]
            return [], []
        return taken, self.movers.move(moves)

    def score(self, nodes: list[NodeState]) -> tuple[int, int, int]:
        """Served weight of the pods placed, then fewer evictions and GPU changes on these nodes (those either
        scan touched), as the plan will count them: a changed GPU stays changed only while some pod uses it (its
        node, under the single strategy)."""
        evicted: set[str] = set()
        changed = 0
        targets = self.decisions.targets
        for node in {node.name: node for node in nodes}.values():
            in_use = {d.gpu for d in self.used[node.name]}
            for gpu in node.gpus:
                target = targets.get((node.name, gpu.index))
                kept = bool(in_use) if node.strategy == "single" else gpu.index in in_use
                if kept and target is not None and target != gpu.mig_devices:
                    changed += 1
                    evicted |= gpu.holders
        running, factor = self.problem.snapshot.running_pod, self.problem.weights.factor
        weight = sum(factor(running(p).priority) for p in evicted)
        return sum(d.weight for d in self.placed), -weight, -changed


class _Scan:
    """Where one pass over a group's candidate nodes resumes for the group's next pod: nodes before `start`
    failed for an earlier pod of the group and fail again unless a repair has changed them since (`revisit`)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._start = 0
        self._revisit: set[int] = set()

    def order(self) -> Iterator[int]:
        """Candidate positions to try, in name order (lazily: a scan mostly stops soon after `start`)."""
        yield from sorted(self._revisit)
        yield from range(self._start, self._size)

    def changed(self, position: int, succeeded_here: bool) -> None:
        """A repair changed the node at `position`; this pass succeeded there (it resumes there) or not."""
        if succeeded_here:
            self._start, self._revisit = position, set()  # the revisited ones before it failed again
        elif position < self._start:
            self._revisit.add(position)

    def exhausted(self) -> None:
        """Every candidate failed for this pod: the group's next pods need only the nodes changed from now on."""
        self._start, self._revisit = self._size, set()

    def restart(self) -> None:
        self._start, self._revisit = 0, set()


class _NodeIndex:
    """Nodes in name order, with what decides whether a group's pods may use them, computed per kind of node."""

    def __init__(self, problem: Problem, representatives: list[Demand]) -> None:
        self.nodes = sorted(problem.snapshot.nodes, key=lambda n: n.name)
        keys = {k for d in representatives for k in d.pod.node_selector}
        keys |= {r.key for d in representatives for t in d.pod.node_affinity for r in t.match_expressions}
        self._shape_of: list[int] = []
        self._candidates: dict[int, list[NodeState]] = {}  # by the group's id: groups outlive the repair
        self._alike: dict[tuple[bool, ...], list[NodeState]] = {}  # by which kinds of node accept: shared, read-only
        self._shapes: list[tuple[NodeState, frozenset[str]]] = []  # a node of the kind, and its GPUs' profiles
        seen: dict[tuple[object, ...], int] = {}
        models: dict[tuple[str, ...], frozenset[str]] = {}  # the GPUs' models -> their profiles
        for node in self.nodes:
            kinds = tuple(g.model for g in node.gpus)
            profiles = models.get(kinds)
            if profiles is None:
                profiles = models[kinds] = frozenset(p for g in node.gpus for p in g.gpu_model.profile_names)
            shape = (
                tuple(sorted((k, v) for k, v in node.labels.items() if k in keys)),
                tuple(node.taints),
                node.unschedulable,
                node.strategy,
                profiles,
            )
            if shape not in seen:
                seen[shape] = len(self._shapes)
                self._shapes.append((node, profiles))
            self._shape_of.append(seen[shape])

    def candidates(self, group: PodGroup) -> list[NodeState]:
        """The nodes that accept the group's pods and have every profile they ask for, name order (made once per
        group: every scan asks)."""
        known = self._candidates.get(id(group))
        if known is None:
            known = self._candidates[id(group)] = self._accepting(group)
        return known

    def _accepting(self, group: PodGroup) -> list[NodeState]:
        demand = group.demands[0]
        needed = {k.rsplit(":", 1)[-1] for k, _ in demand.resources}
        fits = tuple([needed <= profiles and rejection(node, demand) is None for node, profiles in self._shapes])
        found = self._alike.get(fits)  # groups asking alike share the list (442 groups, 0.15 s at 10,000 nodes)
        if found is None:
            found = self._alike[fits] = list(compress(self.nodes, map(fits.__getitem__, self._shape_of)))
        return found


class _Bounds:
    """Per mixed-strategy node and pod priority, the most devices of each profile a repair there could give: each
    GPU's devices the pod may use as the plan stands, or, where the pod may take the GPU's place, as many as the
    profile ever has on it. A node below the request on some profile cannot take the pod, so it is skipped without
    trying; bounds are kept until a repair changes their node. What nodes no repair has changed yet give is the
    same for every scan that starts from the same plan, so scans share it (`initial`)."""

    def __init__(
        self,
        problem: Problem,
        decisions: Decisions,
        used: dict[str, set[Device]],
        floors: _Floors,
        initial: _Remembered,
        free: _EvictionFree,
        movers: Movers,
    ) -> None:
        self._problem = problem
        self._movers = movers
        self._freed: dict[str, _Freed] = {}  # per node, what `_freed_bound` made
        self._free = free
        self._decisions = decisions
        self._used = used
        self._floors = floors
        self._initial = initial
        self._since = _Remembered()  # for the nodes in `_changed`
        self._changed: set[str] = set()

    def may_fit(self, node: NodeState, demand: Demand, evict: int) -> bool:
        """Whether a repair on the node may give the pod its devices (displacing holders when `evict`, moving
        one-device pods away when `_RELOCATE`); in the eviction-free pass a node no repair has changed is first
        ruled out by `_EvictionFree`, before its bounds are made."""
        if node.strategy == "single":
            return evict != _RELOCATE  # re-targeting a whole node is cheap to try and has no simple bound
        name = node.name
        priority = demand.pod.priority
        if evict == _RELOCATE:
            freed = self._freed_bound(node, priority)
            if freed is None:
                return False
            bound = freed
        else:
            changed = name in self._changed
            if not evict and not changed and not self._free.allows(node, demand.resources):
                return False
            remembered = self._since if changed else self._initial
            bounds = remembered.bounds[name].get(priority)
            if bounds is None:
                bounds = remembered.bounds[name][priority] = self._bounds(node, priority, remembered)
            bound = bounds[evict]
        for profile, count in demand.resources:  # noqa: SIM110 (a plain loop: called for every node and pod)
            if bound.get(profile, 0) < count:
                return False
        return True

    def forget(self, node: NodeState) -> None:
        self._changed.add(node.name)
        self._since.bounds.pop(node.name, None)
        self._since.gpus.pop(node.name, None)
        self._freed.pop(node.name, None)

    def _bounds(self, node: NodeState, priority: int, remembered: _Remembered) -> tuple[dict[str, int], ...]:
        """The bound without evictions and with them. A GPU the pod may take the place of (without evicting: one
        nobody holds) counts as many of each profile as the model ever holds (no more than any feasible map, its
        current one or its target, offers); any other, what it offers the pod."""
        gpus = remembered.gpus.get(node.name)
        if gpus is None:
            gpus = remembered.gpus[node.name] = self._facts(node)
        bounds: tuple[dict[str, int], dict[str, int]] = ({}, {})
        for model, floor, tier, offered in gpus:
            if floor < priority:  # the pod may take its place, always when nobody holds it
                for bound in bounds if floor == NOBODY else bounds[1:]:
                    for name, most in _most(model):
                        bound[name] = bound.get(name, 0) + most
            if tier < priority and floor != NOBODY:  # what it offers, where the pod may not take its place
                for bound in bounds[:1] if floor < priority else bounds:
                    for name, count in offered:
                        bound[name] = bound.get(name, 0) + count
        return bounds

    def _freed_bound(self, node: NodeState, priority: int) -> dict[str, int] | None:
        """The bound without evictions once the one-device pods that might move have moved off the node: which
        pods might move changes as the repair learns where none can go (`Movers.unsettled`), so it is made
        again for those nodes. None when no pod on the node might move (no bound then: nothing to try)."""
        for name in self._movers.unsettled():
            self._freed.pop(name, None)
        remembered = self._freed.get(node.name)
        if remembered is None:
            remembered = self._freed[node.name] = _Freed(self._facts_freed(node))
        if remembered.facts is None:
            return None
        if priority in remembered.bounds:
            return remembered.bounds[priority]
        always, tiered = remembered.facts
        bound = dict(always)
        for tier, pairs in tiered:
            if tier < priority:
                for name, count in pairs:
                    bound[name] = bound.get(name, 0) + count
        remembered.bounds[priority] = bound
        return bound

    def _facts_freed(self, node: NodeState) -> _FreedFacts | None:
        """What `_freed_bound` reads of the node whatever the pod's priority: what the GPUs the pod may always
        take the place of give, and each other GPU's tier with what it gives once the movers have moved; None
        when no pod on the node might move. Made once per node (until the node changes, or which pods might
        move does), not once per priority asked."""
        staying: dict[tuple[int, str], int] = {}  # devices of pods that may not move
        movable = self._movers.movable
        moving = False
        for device in self._used[node.name]:
            if movable(device):
                moving = True
            else:
                staying[device.gpu, device.profile] = staying.get((device.gpu, device.profile), 0) + 1
        if not moving:
            return None
        busy = {index for index, _ in staying}
        managed = node.unmanaged is None
        always: dict[str, int] = {}
        tiered: list[tuple[float, tuple[tuple[str, int], ...]]] = []
        for gpu in node.gpus:
            offered, tier = self._offered(node, gpu)
            if managed and gpu.index not in busy and self._floors.floor(gpu) == NOBODY:
                for name, count in _most(gpu.gpu_model.key):
                    always[name] = always.get(name, 0) + count
            elif tier == NOBODY or gpu.index in busy:  # as `_repair_on` offers without evicting, below the tier
                left = tuple((name, count - staying.get((gpu.index, name), 0)) for name, count in offered)
                tiered.append((tier, left))
        return always, tiered

    def _offered(self, node: NodeState, gpu: GpuState) -> tuple[tuple[tuple[str, int], ...], float]:
        """What the GPU offers as the plan stands (its free devices, or its target's when it changes), used or
        not, and its tier."""
        target = self._decisions.targets.get((node.name, gpu.index))
        if target is None or target == gpu.mig_devices:
            return _free_pairs(gpu.free_instances), NOBODY
        return tuple(target.items()), self._floors.tier(gpu, target)

    def _facts(self, node: NodeState) -> list[_GpuFacts]:
        """What `_bound` reads of each GPU of the node, whatever the pod's priority (until a repair there)."""
        used = self._used[node.name]
        taken: dict[tuple[int, str], int] = {}
        for device in used:
            taken[device.gpu, device.profile] = taken.get((device.gpu, device.profile), 0) + 1
        busy = {index for index, _ in taken}
        managed = node.unmanaged is None
        facts = []
        for gpu in node.gpus:
            offered, tier = self._offered(node, gpu)
            if taken:
                offered = tuple((name, count - taken.get((gpu.index, name), 0)) for name, count in offered)
            floor = self._floors.floor(gpu) if managed and gpu.index not in busy else float("inf")
            facts.append(_GpuFacts(gpu.gpu_model.key, floor, tier, offered))
        return facts


_FreedFacts = tuple[dict[str, int], list[tuple[float, tuple[tuple[str, int], ...]]]]
"""`_Bounds._facts_freed`: what the GPUs a pod may always take the place of give, and the others by tier."""


@dataclass
class _Freed:
    """A node's `_facts_freed` (None: no pod there might move) and the bounds made from them, by pod priority."""

    facts: _FreedFacts | None
    bounds: dict[int, dict[str, int]] = field(default_factory=dict)


class _EvictionFree:
    """Which profiles each mixed-strategy node could give a pod without evicting anyone, as the plan stood before
    the repair (the same for every scan; a scan asks only about nodes it has not changed): a GPU nobody holds or
    uses could be rebuilt to anything (on a node migopt manages); any other gives what it offers (its free
    devices, or its target's when the plan rebuilds it), never more. Most nodes of a busy cluster can give a
    large profile only by evicting, so the eviction-free pass skips them without making their bounds."""

    def __init__(self, plan: Decisions) -> None:
        self._targets = plan.targets
        self.used = _devices_by_node(plan.placements)  # as the plan stood: read here, copied by each `_Attempt`
        self._offerable: dict[str, frozenset[str] | None] = {}

    def allows(self, node: NodeState, resources: tuple[tuple[str, int], ...]) -> bool:
        """Whether the (mixed-strategy) node could give every profile asked for."""
        if node.name not in self._offerable:
            self._offerable[node.name] = self._offerable_by(node)
        offerable = self._offerable[node.name]
        return offerable is None or all(key in offerable for key, _ in resources)

    def _offerable_by(self, node: NodeState) -> frozenset[str] | None:
        busy = {device.gpu for device in self.used[node.name]}
        if node.unmanaged is None and any(not gpu.holders and gpu.index not in busy for gpu in node.gpus):
            return None
        keys: set[str] = set()
        for gpu in node.gpus:
            target = self._targets.get((node.name, gpu.index))
            if target is None or target == gpu.mig_devices:
                keys.update(name for name, _ in _free_pairs(gpu.free_instances))
            else:
                keys.update(target)
        return frozenset(keys)


class _Remembered:
    """Per node (and pod priority), its bounds without and with evictions, and the GPU facts they are made from."""

    def __init__(self) -> None:
        self.bounds: dict[str, dict[int, tuple[dict[str, int], ...]]] = defaultdict(dict)
        self.gpus: dict[str, list[_GpuFacts]] = {}


class _GpuFacts(NamedTuple):
    """One GPU as a repair bound reads it: a pod above `floor` may take its place (counting the most of every
    profile its model holds); else a pod above `tier` may take what it `offered`."""

    model: str
    floor: float
    tier: float
    offered: tuple[tuple[str, int], ...]


@cache
def _free_pairs(free_instances: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    """`_free_counts` as (profile, count) pairs."""
    return tuple(_free_counts(free_instances).items())


class _Floors:
    """Per GPU, the priority a pod must exceed to take the GPU's place: every holder may be evicted and ranks
    below the pod (infinite when some holder may not be evicted); remembered, as repairs ask again and again."""

    def __init__(self, problem: Problem) -> None:
        self._snapshot = problem.snapshot
        self._policy = problem.policy
        self._known = problem.holder_facts  # what aggregation read of each running pod
        self._floors: dict[int, float] = {}
        self._tops: dict[int, float] = {}

    def floor(self, gpu: GpuState) -> float:
        floor = self._floors.get(id(gpu))
        if floor is None:
            evictable, top = self._policy.may_evict_all(gpu.holders, self._known, self._snapshot.running_pod)
            floor = self._floors[id(gpu)] = (NOBODY if top is None else top) if evictable else float("inf")
        return floor

    def tier(self, gpu: GpuState, target: dict[str, int] | None) -> float:
        """The priority a pod must exceed to use this GPU's devices: its holders' if it changes, else none."""
        if target is None or not gpu.holders or target == gpu.mig_devices:
            return NOBODY
        top = self._tops.get(id(gpu))
        if top is None:
            _, highest = self._policy.may_evict_all(gpu.holders, self._known, self._snapshot.running_pod)
            top = self._tops[id(gpu)] = NOBODY if highest is None else highest  # it has holders: not None
        return top

    def displaceable(self, gpu: GpuState, priority: int, evict: bool = True) -> bool:
        """A pod of this priority may take the GPU's place (without `evict`: only when nobody holds it)."""
        floor = self.floor(gpu)
        return floor < priority and (evict or floor == NOBODY)


@cache
def _most(model_key: str) -> tuple[tuple[str, int], ...]:
    """Each profile of the model with the most instances a GPU of it ever holds."""
    return tuple((p.name, p.max_count) for p in load_catalog().model(model_key).profiles)


@cache
def _free_counts(free_instances: tuple[tuple[str, int], ...]) -> dict[str, int]:
    """Free devices per profile (a GPU's `free_instances`; GPUs repeat a few of them)."""
    return dict(Counter(p for p, _ in free_instances))


class _Caps:
    """The policy caps against the plan so far: GPUs that change and pods they evict, kept up to date."""

    def __init__(self, problem: Problem, decisions: Decisions) -> None:
        self.policy = problem.policy
        self.active = self.policy.max_evictions is not None or self.policy.max_reconfigurations is not None
        self._gpus = problem.gpu_index()
        self._decisions = decisions
        self.changing: set[GpuRef] = set()
        self.evicted: set[str] = set()
        self._recount()

    @property
    def changing_count(self) -> int:
        return len(self.changing)

    def _recount(self) -> None:
        if not self.active:
            return
        targets = self._decisions.targets
        self.changing = {ref for ref, target in targets.items() if target != self._gpus[ref][1].mig_devices}
        self.evicted = {p for ref in self.changing for p in self._gpus[ref][1].holders}

    def allow(self, node: NodeState, new: dict[int, dict[str, int]]) -> bool:
        """Whether re-targeting these GPUs of the node (each a change) keeps the plan within the caps."""
        if not self.active:
            return True
        refs = [(node.name, i) for i in new if (node.name, i) not in self.changing]
        pods = {p for ref in refs for p in self._gpus[ref][1].holders} - self.evicted
        policy = self.policy
        return (policy.max_evictions is None or len(self.evicted) + len(pods) <= policy.max_evictions) and (
            policy.max_reconfigurations is None or len(self.changing) + len(refs) <= policy.max_reconfigurations
        )

    def record(self, node: NodeState, decisions: Decisions) -> None:
        """Take in the node's targets after a repair there."""
        if not self.active:
            return
        for gpu in node.gpus:
            ref = (node.name, gpu.index)
            target = decisions.targets.get(ref)
            if target is not None and target != gpu.mig_devices:
                self.changing.add(ref)
                self.evicted |= gpu.holders
            elif ref in self.changing:
                self._recount()  # a change undone: which pods are still evicted needs a full recount
                return


def _repair_on(
    problem: Problem,
    decisions: Decisions,
    node: NodeState,
    demand: Demand,
    used: set[Device],
    caps: _Caps,
    floors: _Floors | None = None,
    *,
    evict: bool = True,
) -> list[Device]:
    """Mixed strategy: the devices the pod gets on this node after re-targeting spare GPUs (recorded in
    `decisions`), or []. Without `evict`, no GPU whose holders the plan keeps is re-targeted or used."""
    policy = problem.policy
    floors = floors or _Floors(problem)
    priority = demand.pod.priority
    busy = {d.gpu for d in used}
    offer: dict[int, list[Device]] = {}
    counts: dict[int, dict[str, int]] = {}
    total: dict[str, int] = {}  # devices offered per profile (mixed: the key is the profile); plain dicts, not
    # Counters: their arithmetic was a third of this function's time, and it runs for every node a repair tries
    for gpu in node.gpus:
        target = decisions.targets.get((node.name, gpu.index))
        tier = floors.tier(gpu, target)
        if tier < priority and (evict or tier == NOBODY or gpu.index in busy):
            offer[gpu.index] = [d for _, d in problem.keyed_devices(node, gpu, target) if d not in used]
            counts[gpu.index] = _count_profiles(offer[gpu.index], total)
    wanted = demand.resources
    new_targets: dict[int, dict[str, int]] = {}
    for gpu in sorted(node.gpus, key=lambda g: (len(g.holders), g.index)):
        own = counts.get(gpu.index, {})
        # what the pod still lacks with every other GPU's devices
        missing = {k: c - total.get(k, 0) + own.get(k, 0) for k, c in wanted if c > total.get(k, 0) - own.get(k, 0)}
        if not missing or gpu.index in busy or not floors.displaceable(gpu, priority, evict):
            continue
        if node.unmanaged is not None:
            break  # kept as it is: only its free devices serve
        choice = _scoped_best_map(policy.scope, gpu.gpu_model, gpu.mig_devices_items, tuple(sorted(missing.items())))
        if choice is not None and choice[1] > sum(min(own.get(k, 0), c) for k, c in missing.items()):
            new_targets[gpu.index] = dict(choice[0])
            offer[gpu.index] = [d for _, d in problem.keyed_devices(node, gpu, new_targets[gpu.index])]
            for key, count in own.items():
                total[key] -= count
            counts[gpu.index] = _count_profiles(offer[gpu.index], total)
    if any(c > total.get(k, 0) for k, c in wanted) or not caps.allow(node, new_targets):
        return []
    for index, target in new_targets.items():
        decisions.targets[(node.name, index)] = target
    pool = [d for i in sorted(offer) for d in offer[i]]
    taken = [d for key, count in demand.resources for d in [d for d in pool if d.profile == key][:count]]
    decisions.placements[demand.pod.name] = taken
    return taken


def _count_profiles(devices: list[Device], total: dict[str, int]) -> dict[str, int]:
    """The devices per profile, also added to `total`."""
    counts: dict[str, int] = {}
    for device in devices:
        counts[device.profile] = counts.get(device.profile, 0) + 1
        total[device.profile] = total.get(device.profile, 0) + 1
    return counts


def _repair_single_on(
    problem: Problem,
    decisions: Decisions,
    node: NodeState,
    demand: Demand,
    used: set[Device],
    caps: _Caps,
    floors: _Floors | None = None,
    *,
    evict: bool = True,
) -> list[Device]:
    """Single strategy: the node's devices for the pod (recorded in `decisions`), or [].

    Such a node holds one profile on every GPU or advertises nothing (spec §1.10), so its GPUs never change one
    at a time: the pod gets free devices of the profile the node already holds after the plan, or else every
    GPU of the node is re-targeted to the pod's profile alone, which needs every GPU that changes to be unused
    by the plan and its holders displaceable, within the policy caps. The plan keeps a node's changes only
    while some pod uses the node, so without `evict` a node nobody uses yet must change no held GPU.
    """
    floors = floors or _Floors(problem)
    ((key, _),) = demand.resources
    model_key, profile = key.removeprefix("single:").rsplit(":", 1)
    if any(g.gpu_model.key != model_key for g in node.gpus):
        return []
    taken = _single_take(problem, node, decisions.targets, demand, used, floors)
    if taken and not evict and not used and _changes_held_gpu(node, decisions.targets):
        taken = []
    if taken:
        decisions.placements[demand.pod.name] = taken
        return taken
    model = node.gpus[0].gpu_model
    whole = {profile: max_alone(model, profile)}
    if node.unmanaged is not None or not problem.policy.scope.permits(model, whole):
        return []
    busy = {d.gpu for d in used}
    new_targets: dict[int, dict[str, int]] = {}
    for gpu in node.gpus:
        if decisions.targets.get((node.name, gpu.index), gpu.mig_devices) == whole:
            continue
        stays = whole == gpu.mig_devices  # mig-parted leaves it alone: its holders stay
        priority = demand.pod.priority
        if gpu.index in busy or not (stays or floors.displaceable(gpu, priority, evict)):
            return []
        new_targets[gpu.index] = whole
    gpus = problem.gpu_index()
    changing = {i: t for i, t in new_targets.items() if t != gpus[node.name, i][1].mig_devices}
    if not new_targets or not caps.allow(node, changing):
        return []
    trial = {**decisions.targets, **{(node.name, i): t for i, t in new_targets.items()}}
    if not evict and not used and _changes_held_gpu(node, trial):
        return []
    taken = _single_take(problem, node, trial, demand, used, floors)
    if taken:
        decisions.targets.update((ref, t) for ref, t in trial.items() if ref[0] == node.name)
        decisions.placements[demand.pod.name] = taken
    return taken


def _changes_held_gpu(node: NodeState, targets: dict[GpuRef, dict[str, int]]) -> bool:
    """Some GPU of the node that somebody holds changes under these targets."""
    return any(g.holders and targets.get((node.name, g.index), g.mig_devices) != g.mig_devices for g in node.gpus)


def _single_take(
    problem: Problem,
    node: NodeState,
    targets: dict[GpuRef, dict[str, int]],
    demand: Demand,
    used: set[Device],
    floors: _Floors,
) -> list[Device]:
    """The pod's devices on a single-strategy node under these targets (lowest GPU index and start first), or []
    when the node would not hold the pod's profile alone or has too few devices the pod may take."""
    ((key, count),) = demand.resources
    if single_profile(node, targets) != key.rsplit(":", 1)[-1]:
        return []
    devices: list[Device] = []
    for gpu in sorted(node.gpus, key=lambda g: g.index):
        target = targets.get((node.name, gpu.index))
        if floors.tier(gpu, target) < demand.pod.priority:
            devices += [d for _, d in problem.keyed_devices(node, gpu, target) if d not in used]
    return devices[:count] if len(devices) >= count else []


def _scoped_best_map(
    scope: PlanScope, model: GpuModel, current: tuple[tuple[str, int], ...], missing: tuple[tuple[str, int], ...]
) -> tuple[tuple[tuple[str, int], ...], int] | None:
    """`_best_map` among the targets the scope allows the model."""
    if scope.allowlist(model) is None:
        return _best_map(model.key, current, missing)
    return _most_covering(scope.target_maps(model, [p for p, _ in missing]), current, missing)


@cache
def _best_map(
    model_key: str, current: tuple[tuple[str, int], ...], missing: tuple[tuple[str, int], ...]
) -> tuple[tuple[tuple[str, int], ...], int] | None:
    """The map (never the current one) of a mixed-strategy GPU covering most of what is missing, and how much it
    covers; the first such map in `maximal_maps` order. A pure function of its arguments, so computed once each."""
    model = load_catalog().model(model_key)
    profiles = [p for p in model.profile_names if p in dict(missing)]
    return _most_covering(maximal_maps(model, profiles), current, missing) if profiles else None


def _most_covering(
    maps: list[dict[str, int]], current: tuple[tuple[str, int], ...], missing: tuple[tuple[str, int], ...]
) -> tuple[tuple[tuple[str, int], ...], int] | None:
    """The first of `maps` (never the current one) covering most of what is missing, and how much it covers."""
    wanted = dict(missing)
    best: tuple[tuple[tuple[str, int], ...], int] | None = None
    for devices in maps:
        if devices == dict(current):
            continue
        covered = sum(min(c, wanted[p]) for p, c in devices.items())
        if best is None or covered > best[1]:
            best = (tuple(devices.items()), covered)
    return best
