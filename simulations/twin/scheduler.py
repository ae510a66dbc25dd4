"""A kube-scheduler plus kubelet device allocation, reduced to what MIG pods need.

Pending pods go in priority order (then arrival). A node qualifies when Kubernetes' filters pass
(`solver.demand.rejection`: cordon, selector, affinity, taints, strategy) and it has enough free devices it
currently advertises for every requested resource; all of a pod's devices come from that one node. Among
qualifying nodes one is drawn with the twin's seeded generator, as kube-scheduler breaks equal scores at
random. Devices go lowest GPU index, then lowest start, first. A pod asking exactly what an earlier unserved
pod asked is skipped, until free capacity may have grown: the queue (`queue.py`) hands a pass one pod per
group of alike pods, so a long queue of them costs one search. Only nodes offering the first requested device
are looked at (an index kept as pools change), and only the drawn node allocates.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from operator import attrgetter
from typing import Protocol

from simulations.twin.queue import Ask, PendingQueue
from simulations.twin.state import DeviceRef, TwinNode, TwinPod
from solver.demand import Demand, rejection
from solver.profiles import MIG_RESOURCE_PREFIX, resource_name
from solver.snapshot import GPU_RESOURCE, PRODUCT_LABEL, NodeState, split_single_product

Binder = Callable[[TwinPod, str, list[DeviceRef]], None]


class SchedulingView(Protocol):
    """What a pass reads of the cluster, node by node, so that it reads only the nodes it needs."""

    @property
    def nodes(self) -> Mapping[str, TwinNode]: ...

    def advertised(self, node: str) -> Iterable[DeviceRef]:
        """The devices the node's plugin advertises now."""
        ...

    def pool_key(self, node: str) -> tuple[int, ...]:
        """Moves whenever the node's free devices may have changed (plugin registration, holdings)."""
        ...

    @property
    def revisions(self) -> Mapping[str, int]:
        """Per node, moves whenever its labels, taints or cordon may have changed (absent: 0)."""
        ...


class PodScheduler(Protocol):
    """What binds the twin's pending pods: the device plugin's scheduler below (`Scheduler`), or a peer's that
    creates an instance per pod (`simulations.peers`). The twin calls `run` after every change that may let a pod
    start, `node_changed` when a node's devices change hands or its plugin registers, `forget` after its objects
    were edited directly."""

    def run(
        self,
        queue: PendingQueue,
        demand_of: Callable[[TwinPod], Demand],
        cluster: SchedulingView,
        bind: Binder,
        growth: tuple[int, ...] = (),
    ) -> int: ...

    def node_changed(self, name: str) -> None: ...

    def forget(self) -> None: ...


_allocation_order = attrgetter("gpu", "start")


class FreePool:
    """A node's free advertised devices: those that still exist as advertised and no pod holds, grouped by
    resource name, each group in allocation order (GPU index, then start). Valid until the node's plugin
    re-registers or its devices change hands; `take` keeps it exact through the scheduler's own bindings."""

    def __init__(self, node: TwinNode, advertised: Iterable[DeviceRef]) -> None:
        self.node = node
        free = {(g.index, i.start): i.profile for g in node.gpus if g.mig_enabled for i in g.instances if i.pod is None}
        self.by_resource: dict[str, list[DeviceRef]] = {}
        for ref in sorted(advertised, key=_allocation_order):
            if free.get((ref.gpu, ref.start)) == ref.profile:
                self.by_resource.setdefault(resource_name(ref.profile), []).append(ref)

    def __bool__(self) -> bool:
        return any(self.by_resource.values())

    def take(self, devices: Iterable[DeviceRef]) -> None:
        for ref in devices:
            self.by_resource[resource_name(ref.profile)].remove(ref)


@cache
def _single_target(product: str) -> tuple[str, str]:
    model, profile = split_single_product(product)
    return model.key, profile


def pick_devices(demand: Demand, pool: FreePool) -> list[DeviceRef] | None:
    """The devices this node would allocate to the pod, or None when it cannot serve every request."""
    requests = demand.pod.requests
    if demand.kind == "single":
        product = demand.pod.node_selector.get(PRODUCT_LABEL, "")
        if pool.node.labels.get(PRODUCT_LABEL) != product:
            return None
        model, profile = _single_target(product)
        candidates = pool.by_resource.get(resource_name(profile), [])
        usable = [d for d in candidates if pool.node.gpu(d.gpu).model == model]
        count = requests[GPU_RESOURCE]
        return usable[:count] if len(usable) >= count else None
    chosen: list[DeviceRef] = []
    for resource, count in sorted(requests.items()):
        if not resource.startswith(MIG_RESOURCE_PREFIX):
            if resource.startswith("nvidia.com/"):
                return None  # whole GPUs are not modelled as schedulable devices
            continue
        matching = pool.by_resource.get(resource, [])
        if len(matching) < count:
            return None
        chosen += matching[:count]
    return chosen


Need = tuple[tuple[str, int], ...]


def mixed_need(demand: Demand) -> Need | None:
    """The free devices a mixed-strategy pod needs on one node, by resource; None when no node can have them (it
    asks for whole GPUs, which are not modelled as schedulable devices)."""
    need = []
    for resource, count in sorted(demand.pod.requests.items()):
        if not resource.startswith(MIG_RESOURCE_PREFIX):
            if resource.startswith("nvidia.com/"):
                return None
            continue
        need.append((resource, count))
    return tuple(need)


def fits(need: Need, pool: FreePool) -> bool:
    """Whether `pick_devices` would find a mixed-strategy pod's devices here, without building the list."""
    return all(len(pool.by_resource.get(resource, ())) >= count for resource, count in need)


def _first_resource(demand: Demand) -> str:
    """The resource name of a pod's first requested device, as the device plugin advertises it."""
    if demand.kind == "single":
        return resource_name(_single_target(demand.pod.node_selector.get(PRODUCT_LABEL, ""))[1])
    return resource_name(demand.resources[0][0])


def filter_view(node: TwinNode) -> NodeState:
    """The node as Kubernetes' filters read it (`solver.demand.rejection`): labels, taints, cordon."""
    return NodeState(name=node.name, labels=node.labels, taints=node.taints, unschedulable=node.unschedulable)


class Scheduler:
    """Binds pending pods; keeps, across passes, each node's filter view and free pool until they go stale, and
    which nodes offer a free device of each resource.

    A node's view and filter answers are rebuilt when its revision (labels, taints, cordon) moves; its pool when
    the twin reports it changed (`node_changed`: its plugin re-registered or its devices changed hands) and its
    key moved. A pass after one pod finished rebuilds one pool and looks at the nodes offering what the queue's
    heads ask for, not at every node.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._views: dict[str, tuple[int, NodeState]] = {}
        self._allowed: dict[object, dict[str, tuple[int, bool]]] = {}  # eligibility → node → (revision, passes)
        self._pools: dict[str, tuple[tuple[int, ...], FreePool]] = {}
        self._offering: dict[str, list[str]] = {}  # resource → nodes with a free device of it, sorted by name
        self._indexed = False  # False: every pool is rebuilt at the next pass
        self._stale: set[str] = set()
        self._growth: tuple[int, ...] = ()
        self._unservable: set[Ask] = set()

    def node_changed(self, name: str) -> None:
        """The node's plugin re-registered or its devices changed hands: its pool is checked at the next pass."""
        self._stale.add(name)

    def forget(self) -> None:
        """Drop every cache (after the twin's objects were edited directly)."""
        self._growth, self._unservable = (), set()
        self._views.clear()
        self._allowed.clear()
        self._pools.clear()
        self._offering.clear()
        self._indexed = False
        self._stale.clear()

    def _qualifying(self, demand: Demand, cluster: SchedulingView) -> list[str]:
        """The nodes, by name, whose filters pass and which have every device the pod asks for free (only the drawn
        one allocates: `pick_devices`)."""
        nodes, revisions = cluster.nodes, cluster.revisions
        allowed = self._allowed.setdefault(demand.eligibility_key, {})
        first = _first_resource(demand)
        passing = []
        for name in self._offering.get(first, ()):  # only nodes with its first device free
            revision = revisions.get(name, 0)
            verdict = allowed.get(name)
            if verdict is None or verdict[0] != revision:
                passes = rejection(self._view(nodes[name], revision), demand) is None
                verdict = allowed[name] = (revision, passes)
            if verdict[1]:
                passing.append(name)
        pools = self._pools
        if demand.kind == "single":
            return [name for name in passing if pick_devices(demand, pools[name][1]) is not None]
        need = mixed_need(demand)
        if need is None:
            return []
        if need == ((first, 1),):  # a node offering it has one free
            return passing
        return [name for name in passing if fits(need, pools[name][1])]

    def _view(self, node: TwinNode, revision: int) -> NodeState:
        cached = self._views.get(node.name)
        if cached is None or cached[0] != revision:
            cached = self._views[node.name] = (revision, filter_view(node))
        return cached[1]

    def _offer(self, name: str, resource: str) -> None:
        nodes = self._offering.setdefault(resource, [])
        at = bisect_left(nodes, name)
        if at == len(nodes) or nodes[at] != name:
            nodes.insert(at, name)

    def _withdraw(self, name: str, resource: str) -> None:
        nodes = self._offering.get(resource, [])
        at = bisect_left(nodes, name)
        if at < len(nodes) and nodes[at] == name:
            del nodes[at]

    def _set_pool(self, name: str, pool: tuple[tuple[int, ...], FreePool] | None) -> None:
        old = self._pools.pop(name, None)
        if old is not None:
            for resource, refs in old[1].by_resource.items():
                if refs:
                    self._withdraw(name, resource)
        if pool is not None:
            self._pools[name] = pool
            for resource, refs in pool[1].by_resource.items():
                if refs:
                    self._offer(name, resource)

    def _refresh(self, cluster: SchedulingView) -> None:
        """Bring the pools of the nodes that changed (all of them after `forget`) up to date."""
        nodes = cluster.nodes
        if not self._indexed:
            self._pools.clear()
            self._offering.clear()
            stale: Iterable[str] = sorted(nodes)
            self._indexed = True
        else:
            stale = self._stale
        for name in stale:
            node = nodes.get(name)
            if node is None:
                self._set_pool(name, None)
                continue
            key = cluster.pool_key(name)
            cached = self._pools.get(name)
            if cached is None or cached[0] != key:
                self._set_pool(name, (key, FreePool(node, cluster.advertised(name))))
        self._stale = set()

    def _take(self, name: str, devices: list[DeviceRef]) -> None:
        pool = self._pools[name][1]
        pool.take(devices)
        for resource in {resource_name(ref.profile) for ref in devices}:
            if not pool.by_resource[resource]:
                self._withdraw(name, resource)

    def run(
        self,
        queue: PendingQueue,
        demand_of: Callable[[TwinPod], Demand],
        cluster: SchedulingView,
        bind: Binder,
        growth: tuple[int, ...] = (),
    ) -> int:
        """One pass over the queue; returns how many pods it bound.

        `growth` changes whenever free capacity may have grown (devices freed, a plugin re-registered, node
        metadata changed). While it does not, an ask that found no node stays unanswerable, across passes too.
        """
        if growth != self._growth:
            self._growth, self._unservable = growth, set()
        unservable = self._unservable  # free devices only shrink meanwhile: same ask, same answer
        bound = 0
        refreshed = False
        for pod, ask in queue.walk(unservable):
            if not refreshed:
                self._refresh(cluster)
                refreshed = True
            demand = demand_of(pod)
            options = self._qualifying(demand, cluster)
            if not options:
                unservable.add(ask)
                continue
            name = options[self._rng.randrange(len(options))] if len(options) > 1 else options[0]
            devices = pick_devices(demand, self._pools[name][1])
            if devices is None:
                raise RuntimeError(f"twin bug: {name} qualified for {pod.name} but has no devices for it")
            self._take(name, devices)
            bind(pod, name, devices)
            self._pools[name] = (cluster.pool_key(name), self._pools[name][1])  # `take` already made it exact
            bound += 1
        return bound
