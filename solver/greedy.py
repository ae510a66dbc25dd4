"""The nos-style greedy planner: the baseline the optimal policy is measured against.

It mirrors nebuly-ai/nos (spec/peers.md §1): cluster-wide lacking devices, pods by priority then size, nodes by
name; on each node every idle GPU takes the geometry covering the most lacking devices, then pods are placed on
that node, and the node's changes are kept only if some pod fits. Lacking counts free devices only where the
sweep can still use them: this node's other GPUs and the nodes after it. Unlike nos, every tie is broken the same way
on every run, and a GPU with an instance held by a pod is never reconfigured (greedy never evicts).

The sweep stays near-linear in nodes plus pods (thousands of nodes, tens of thousands of pods): a node's tentative
changes live in a scratch merged on commit; the requested counts and the later nodes' supply are running totals;
pending pods are bucketed by node filters and request, so a node only looks at pods it could take; filters are
evaluated once per kind of node and kind of pod; and a GPU's best map is cached by what is lacking.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from heapq import heapify, heappop, heappush

from solver.catalog import GpuModel
from solver.decisions import Decisions, Device, GpuRef, advertises_nothing, free_devices, resource_key
from solver.demand import Demand, demands, key_compute_slices, rejection, single_key, weights_for
from solver.geometry import MigDevices, feasible_maps, max_alone, size_order
from solver.plan import PlanPolicy
from solver.scope import PlanScope, scoped
from solver.snapshot import ClusterSnapshot, GpuState, NodeState

_Resources = tuple[tuple[str, int], ...]
"""A demand's request: (resource key, count) pairs."""


@dataclass
class _State:
    """Targets chosen and devices given on the nodes committed so far."""

    targets: dict[GpuRef, MigDevices] = field(default_factory=dict)
    placements: dict[str, list[Device]] = field(default_factory=dict)


@dataclass
class _NodePlan:
    """One node's tentative targets and placements.

    Kept only if some pod is placed there, as nos reverts its fork. A node's choices touch only its own GPUs,
    so this scratch is all a fork needs: nothing committed has to be copied.
    """

    targets: dict[GpuRef, MigDevices] = field(default_factory=dict)
    placements: dict[str, list[Device]] = field(default_factory=dict)

    def commit(self, state: _State) -> None:
        state.targets.update(self.targets)
        state.placements.update(self.placements)


@dataclass
class _NodeView:
    """A node's GPUs by index and each one's free devices (with resource keys) under its current layout.

    Built once per node: the same devices give the later nodes' supply and the node's own starting pool.
    """

    node: NodeState
    gpus: list[GpuState]
    free: list[Sequence[tuple[str, Device]]]
    supplies: list[Counter[str]]  # each GPU's free devices per resource key (shared: never changed in place)
    supply: Counter[str]  # all of them per resource key


KeptDevices = Callable[[NodeState, GpuState], Sequence[tuple[str, Device]]]
"""A GPU's free devices if it keeps its map, each with its resource key (`Problem.keyed_devices` remembers them
for the optimal policy's disaggregation, which reads the same ones)."""


def _kept_devices(node: NodeState, gpu: GpuState) -> list[tuple[str, Device]]:
    return [(resource_key(node, gpu, d.profile), d) for d in free_devices(node, gpu, None)]


def _view(node: NodeState, kept: KeptDevices, counted: dict[tuple[str, ...], Counter[str]]) -> _NodeView:
    """`counted`: each distinct sequence of resource keys counted, shared by every GPU with it (GPUs repeat a few
    layouts: counting each GPU's devices afresh, in `_choose_mixed`, took 0.3 s of a 2.5–3 s sweep at 10,000
    nodes)."""
    gpus = _sorted_gpus(node)
    if advertises_nothing(node, {}):
        free: list[Sequence[tuple[str, Device]]] = [[] for _ in gpus]  # MIG-INVALID: the plugin advertises nothing
    else:
        free = [kept(node, g) for g in gpus]
    supplies = []
    for devices in free:
        keys = tuple([key for key, _ in devices])
        counts = counted.get(keys)
        if counts is None:
            counts = counted[keys] = Counter(keys)
        supplies.append(counts)
    total = Counter(key for devices in free for key, _ in devices)  # counted afresh: adding `supplies` is slower
    return _NodeView(node, gpus, free, supplies, total)


@cache
def _key_slices(key: str) -> int:
    """`key_compute_slices`, cached: parsing the profile again for every pod dominated sorting the pods."""
    return key_compute_slices(key)


def _pod_order(demand: Demand) -> tuple[int, int, str]:
    """nos's order: priority first, then the smaller request (more pods fit), then name for determinism."""
    slices = sum(_key_slices(k) * c for k, c in demand.resources)
    return (-demand.pod.priority, slices, demand.pod.name)


def _sorted_gpus(node: NodeState) -> list[GpuState]:
    return sorted(node.gpus, key=lambda g: g.index)


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


def _add(total: Counter[str], part: Counter[str], sign: int) -> None:
    """Add (or subtract) in place; unlike Counter's operators this keeps zeros, which read the same as absent."""
    for key, count in part.items():
        total[key] += sign * count


@dataclass
class _Bucket:
    """Unplaced pods with the same node filters and request, in pod order.

    Such pods are interchangeable on any node: if the first does not fit none does (a node's pool only shrinks),
    so pods always leave from the front and `head` is all the bookkeeping needed.
    """

    group: int
    resources: _Resources
    pods: list[tuple[int, Demand]]  # (rank in pod order, demand)
    head: int = 0

    @property
    def done(self) -> bool:
        return self.head == len(self.pods)


class _Pending:
    """The pods not placed yet, with the counts the sweep reads, updated as pods are placed instead of recounted."""

    def __init__(self, ordered: list[Demand]) -> None:
        self.requested = _requested(ordered)
        self.left = len(ordered)
        groups: dict[tuple[object, ...], int] = {}
        self.representatives: list[Demand] = []  # one demand per eligibility key, for `rejection`
        self.group_left: list[int] = []
        buckets: dict[tuple[int, _Resources], _Bucket] = {}
        for rank, demand in enumerate(ordered):
            key = demand.eligibility_key  # computed once (memo)
            if key not in groups:
                groups[key] = len(groups)
                self.representatives.append(demand)
                self.group_left.append(0)
            group = groups[key]
            self.group_left[group] += 1
            bucket = buckets.setdefault((group, demand.resources), _Bucket(group, demand.resources, []))
            bucket.pods.append((rank, demand))
        self._by_first_key: dict[str | None, list[_Bucket]] = {}
        for bucket in buckets.values():
            self._by_first_key.setdefault(_first_key(bucket.resources), []).append(bucket)

    def any_for(self, accepted: frozenset[int]) -> bool:
        """Whether some unplaced pod may run on a node accepting these groups."""
        return any(self.group_left[g] for g in accepted)

    def candidates(self, accepted: frozenset[int], keys: Iterable[str]) -> list[_Bucket]:
        """Buckets whose pods the node accepts and whose first requested key the node has free."""
        result: list[_Bucket] = []
        for key in (None, *keys):  # None: pods requesting nothing, which fit anywhere
            result += (b for b in self._by_first_key.get(key, ()) if b.group in accepted and not b.done)
        return result

    def pop(self, bucket: _Bucket) -> Demand:
        """The bucket's first pod, now placed: it leaves the counts (placing commits the node, so this is final)."""
        _, demand = bucket.pods[bucket.head]
        bucket.head += 1
        if bucket.done:
            self._by_first_key[_first_key(bucket.resources)].remove(bucket)
        self.left -= 1
        self.group_left[bucket.group] -= 1
        for key, count in demand.resources:
            self.requested[key] -= count
        return demand


def _first_key(resources: _Resources) -> str | None:
    return resources[0][0] if resources else None


class _Filters:
    """`rejection` answers, once per kind of node and kind of pod instead of once per node and pod.

    A pod's kind is its `Demand.eligibility_key`; a node's kind is everything of it `rejection` reads (cordon,
    strategy, taints, and the labels some pod's selector or affinity names: real nodes all differ in others, such
    as their hostname), which real clusters repeat across many nodes.
    """

    def __init__(self, representatives: list[Demand]) -> None:
        self._representatives = representatives
        self._accepted: dict[tuple[object, ...], frozenset[int]] = {}
        self._keys = {k for d in representatives for k in d.pod.node_selector} | {
            r.key for d in representatives for t in d.pod.node_affinity for r in t.match_expressions
        }

    def accepted(self, node: NodeState) -> frozenset[int]:
        """The pod groups (indices into the representatives) the node may run."""
        kind = (
            node.unschedulable,
            node.strategy,
            tuple(sorted((k, v) for k, v in node.labels.items() if k in self._keys)),
            tuple((t.key, t.value, t.effect) for t in node.taints),
        )
        if kind not in self._accepted:
            self._accepted[kind] = frozenset(
                g for g, demand in enumerate(self._representatives) if rejection(node, demand) is None
            )
        return self._accepted[kind]


class _MapChooser:
    """The best feasible map of a mixed-strategy GPU for a lacking vector, cached per model and vector.

    A map's score only depends on the lacking count of each of the model's profiles, capped at the most any map
    holds, so few distinct vectors occur however many GPUs are decided.
    """

    def __init__(self, scope: PlanScope) -> None:
        self.scope = scope
        self._maps: dict[str, tuple[list[MigDevices], dict[str, int]]] = {}
        self._best: dict[tuple[str, tuple[int, ...]], tuple[MigDevices | None, int]] = {}

    def profiles(self, model: GpuModel) -> dict[str, int]:
        """The model's profiles, each with the most instances any feasible map holds."""
        return self._model(model)[1]

    def best(self, model: GpuModel, lacking: dict[str, int]) -> tuple[MigDevices | None, int]:
        """The first map with the highest score and that score, as a scan keeping strict improvements finds it."""
        maps, caps = self._model(model)
        key = (model.key, tuple(min(lacking[p], cap) for p, cap in caps.items()))
        if key not in self._best:
            best: MigDevices | None = None
            best_score = -1
            for devices in maps:
                score = sum(min(c, lacking[p]) for p, c in devices.items())
                if score > best_score:
                    best, best_score = devices, score
            self._best[key] = (best, best_score)
        return self._best[key]

    def _model(self, model: GpuModel) -> tuple[list[MigDevices], dict[str, int]]:
        if model.key not in self._maps:
            maps = [m for m in feasible_maps(model) if self.scope.permits(model, m)]
            caps = {p: max((m.get(p, 0) for m in maps), default=0) for p in model.profile_names}
            self._maps[model.key] = (maps, caps)
        return self._maps[model.key]


def _choose_mixed(
    view: _NodeView,
    plan: _NodePlan,
    requested: Counter[str],
    later: Counter[str],
    room: int | None,
    chooser: _MapChooser,
) -> None:
    """Give each idle GPU the first feasible map covering the most lacking devices, if that beats keeping it.

    `room` is how many more GPUs the cap lets this node reconfigure (None: no cap).
    """
    supplies = list(view.supplies)  # an entry is replaced, never changed, when its GPU changes
    on_node = Counter(view.supply)
    for i, gpu in enumerate(view.gpus):
        if gpu.holders:  # never delete a device a pod holds: greedy does not evict
            continue
        if room is not None and len(plan.targets) >= room:
            return  # no further GPU may change
        model = gpu.gpu_model
        # elsewhere: the later nodes' supply and this node's other GPUs', i.e. all on the node but this GPU's
        lacking = {p: max(0, requested[p] - later[p] - on_node[p] + supplies[i][p]) for p in chooser.profiles(model)}
        best, best_score = chooser.best(model, lacking)
        keep_score = sum(min(c, lacking[k]) for k, c in supplies[i].items())
        if best is None or best_score <= keep_score or best == _current_map(gpu):
            continue
        plan.targets[(view.node.name, gpu.index)] = dict(best)
        _add(on_node, supplies[i], -1)
        supplies[i] = Counter(best)  # a mixed node advertises each device under its profile name
        _add(on_node, supplies[i], 1)


def _choose_single(
    view: _NodeView, plan: _NodePlan, requested: Counter[str], later: Counter[str], room: int | None, scope: PlanScope
) -> None:
    """Turn every GPU of an idle, one-model single-strategy node into one profile, if that beats keeping it."""
    gpus = view.gpus
    if not gpus or len({g.gpu_model.key for g in gpus}) != 1 or any(g.holders for g in gpus):
        return
    model = gpus[0].gpu_model
    best: MigDevices | None = None
    best_score = _score(view.supply, requested, later)
    for profile in size_order(model):
        count = max_alone(model, profile.name)
        if not scope.permits(model, {profile.name: count}):
            continue
        offer = Counter({single_key(model.key, profile.name): count * len(gpus)})
        score = _score(offer, requested, later)
        if score > best_score:
            best, best_score = {profile.name: count}, score
    changed = [g for g in gpus if best is not None and _current_map(g) != best]
    if best is None or not changed or (room is not None and len(plan.targets) + len(changed) > room):
        return
    for gpu in changed:
        plan.targets[(view.node.name, gpu.index)] = dict(best)


class _Pool:
    """A node's free devices by resource key, each list lowest (GPU index, start) first: the order pods take them."""

    def __init__(self, view: _NodeView, targets: dict[GpuRef, MigDevices]) -> None:
        self.by_key: dict[str, list[Device]] = {}
        node = view.node
        single = node.strategy == "single"
        if advertises_nothing(node, targets):
            return  # the node would hold several profiles (or none) on its GPUs: no device is advertised
        for gpu, current in zip(view.gpus, view.free, strict=True):
            target = targets.get((node.name, gpu.index))
            if target is None and not single:
                devices = current
            else:
                devices = [(resource_key(node, gpu, d.profile), d) for d in free_devices(node, gpu, target)]
            for key, device in devices:
                self.by_key.setdefault(key, []).append(device)

    def fits(self, resources: _Resources) -> bool:
        by_key = self.by_key
        for key, count in resources:  # noqa: SIM110 (a generator under `all` costs twice this loop, asked 10^5 times)
            if len(by_key.get(key, ())) < count:
                return False
        return True

    def take(self, resources: _Resources) -> list[Device]:
        """Every device the request asks for (it must fit): a pod never spans nodes."""
        chosen: list[Device] = []
        for key, count in resources:
            devices = self.by_key[key]
            chosen += devices[:count]
            del devices[:count]
        return chosen


def _place(plan: _NodePlan, pool: _Pool, buckets: list[_Bucket], pending: _Pending) -> None:
    """Offer the pool to the candidate pods in pod order; a bucket whose first pod does not fit is done here."""
    heap = [(bucket.pods[bucket.head][0], i) for i, bucket in enumerate(buckets)]
    heapify(heap)
    while heap:
        _, i = heappop(heap)
        bucket = buckets[i]
        if not pool.fits(bucket.resources):
            continue
        devices = pool.take(bucket.resources)
        plan.placements[pending.pop(bucket).pod.name] = devices
        if not bucket.done:
            heappush(heap, (bucket.pods[bucket.head][0], i))


def greedy_decisions(
    snapshot: ClusterSnapshot,
    policy: PlanPolicy,
    pending_pods: list[Demand] | None = None,
    kept_devices: KeptDevices = _kept_devices,
) -> Decisions:
    """Plan like nos, deterministically: reconfigure idle GPUs node by node and place pods where they fit.

    `pending_pods`: the snapshot's demands when the caller has them already (`demands` with `weights_for`);
    `kept_devices`: where a GPU's free devices come from, when the caller remembers them."""
    snapshot = scoped(snapshot, policy.scope)
    if pending_pods is None:
        pending_pods = demands(snapshot, weights_for(snapshot))
    pending = _Pending(sorted(pending_pods, key=_pod_order))
    filters = _Filters(pending.representatives)
    chooser = _MapChooser(policy.scope)
    counted: dict[tuple[str, ...], Counter[str]] = {}
    views = [_view(node, kept_devices, counted) for node in sorted(snapshot.nodes, key=lambda n: n.name)]
    later: Counter[str] = Counter()  # free devices of the nodes after the current one: all the sweep can still use
    for view in views:
        _add(later, view.supply, 1)
    cap = policy.max_reconfigurations
    state = _State()
    for view in views:
        _add(later, view.supply, -1)
        if not pending.left:
            break
        accepted = filters.accepted(view.node)
        if not pending.any_for(accepted):  # nothing could be placed here, so anything chosen would be reverted
            continue
        plan = _NodePlan()
        room = None if cap is None else cap - len(state.targets)
        if view.node.unmanaged is not None:  # kept as it is: only its free devices serve
            pass
        elif view.node.strategy == "single":
            _choose_single(view, plan, pending.requested, later, room, policy.scope)
        else:
            _choose_mixed(view, plan, pending.requested, later, room, chooser)
        pool = _Pool(view, plan.targets)
        _place(plan, pool, pending.candidates(accepted, pool.by_key), pending)
        if plan.placements:
            plan.commit(state)
    return Decisions(targets=dict(state.targets), placements=dict(state.placements))
