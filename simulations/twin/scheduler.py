"""A kube-scheduler plus kubelet device allocation, reduced to what MIG pods need.

Pending pods go in priority order (then arrival). A node qualifies when Kubernetes' filters pass
(`solver.demand.rejection`: cordon, selector, affinity, taints, strategy) and it has enough free devices it
currently advertises for every requested resource; all of a pod's devices come from that one node. Among
qualifying nodes one is drawn with the twin's seeded generator, as kube-scheduler breaks equal scores at
random. Devices go lowest GPU index, then lowest start, first. Within a pass, a pod asking exactly what an
earlier unserved pod asked is skipped, so a long queue of alike pods costs one search.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from functools import cache

from simulations.twin.state import DeviceRef, TwinNode, TwinPod
from solver.demand import Demand, rejection
from solver.profiles import MIG_RESOURCE_PREFIX, resource_name
from solver.snapshot import GPU_RESOURCE, PRODUCT_LABEL, NodeState, split_single_product

Binder = Callable[[TwinPod, str, list[DeviceRef]], None]


class FreePool:
    """A node's free advertised devices: those that still exist as advertised and no pod holds, grouped by
    resource name, each group in allocation order (GPU index, then start). Valid until the node's plugin
    re-registers or its devices change hands; `take` keeps it exact within a pass."""

    def __init__(self, node: TwinNode, advertised: Iterable[DeviceRef]) -> None:
        self.node = node
        gpus = {g.index: g for g in node.gpus if g.mig_enabled}
        self.by_resource: dict[str, list[DeviceRef]] = {}
        for ref in sorted(advertised, key=lambda d: (d.gpu, d.start)):
            gpu = gpus.get(ref.gpu)
            instance = gpu.instance_at(ref.start) if gpu is not None else None
            if instance is not None and instance.profile == ref.profile and instance.pod is None:
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


def _first_resource(demand: Demand) -> str:
    """The resource name of a pod's first requested device, as the device plugin advertises it."""
    if demand.kind == "single":
        return resource_name(_single_target(demand.pod.node_selector.get(PRODUCT_LABEL, ""))[1])
    return resource_name(demand.resources[0][0])


def _filter_view(node: TwinNode) -> NodeState:
    return NodeState(name=node.name, labels=node.labels, taints=node.taints, unschedulable=node.unschedulable)


class Scheduler:
    """Binds pending pods; keeps, across passes, each node's filter view and free pool until they go stale.

    A node's view is rebuilt when `meta_version` (labels, taints, cordons) moves, its pool when its key (the
    plugin's registration and the node's device holdings) moves, so a pass after one pod finished rebuilds
    one pool, not all of them.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._views: dict[str, tuple[int, NodeState]] = {}
        self._pools: dict[str, tuple[tuple[int, ...], FreePool]] = {}
        self._allowed: dict[tuple[object, str], bool] = {}  # (eligibility, node) → filters pass
        self._allowed_version = -1
        self._asks: dict[str, tuple[object, ...]] = {}
        self._growth: tuple[int, ...] = ()
        self._unservable: set[tuple[object, ...]] = set()
        self._considered: set[str] = set()  # pods a pass already looked at since `growth` last moved

    def _ask(self, demand: Demand) -> tuple[object, ...]:
        """What a pod asks of a node, computed once per pod."""
        name = demand.pod.name
        ask = self._asks.get(name)
        if ask is None:
            selector = tuple(sorted(demand.pod.node_selector.items()))
            ask = self._asks[name] = (demand.eligibility_key, demand.resources, selector)
        return ask

    def forget(self) -> None:
        """Drop every cache (after the twin's objects were edited directly)."""
        self._growth, self._unservable, self._considered = (), set(), set()
        self._views.clear()
        self._pools.clear()
        self._allowed.clear()

    def _passes(self, node: TwinNode, demand: Demand, eligibility: object, meta_version: int) -> bool:
        if meta_version != self._allowed_version:
            self._allowed.clear()
            self._allowed_version = meta_version
        key = (eligibility, node.name)
        allowed = self._allowed.get(key)
        if allowed is None:
            allowed = self._allowed[key] = rejection(self._view(node, meta_version), demand) is None
        return allowed

    def _view(self, node: TwinNode, meta_version: int) -> NodeState:
        cached = self._views.get(node.name)
        if cached is None or cached[0] != meta_version:
            cached = self._views[node.name] = (meta_version, _filter_view(node))
        return cached[1]

    def _pool(self, node: TwinNode, advertised: Iterable[DeviceRef], key: tuple[int, ...]) -> FreePool:
        cached = self._pools.get(node.name)
        if cached is None or cached[0] != key:
            cached = self._pools[node.name] = (key, FreePool(node, advertised))
        return cached[1]

    def run(
        self,
        pending: Iterable[TwinPod],
        demand_of: Callable[[TwinPod], Demand],
        nodes: Mapping[str, TwinNode],
        advertised: Mapping[str, Iterable[DeviceRef]],
        pool_keys: Mapping[str, tuple[int, ...]],
        meta_version: int,
        bind: Binder,
        growth: tuple[int, ...] = (),
    ) -> int:
        """One pass over `pending` (already in queue order); returns how many pods it bound.

        `growth` changes whenever free capacity may have grown (devices freed, a plugin re-registered, node
        metadata changed). While it does not, an ask that found no node stays unanswerable, across passes too.
        """
        if growth != self._growth:
            self._growth, self._unservable, self._considered = growth, set(), set()
        unservable = self._unservable  # free devices only shrink meanwhile: same ask, same answer
        todo = [pod for pod in pending if pod.name not in self._considered]  # the others found no node already
        self._considered.update(pod.name for pod in todo)
        if not todo:
            return 0
        names = sorted(nodes)
        pools = {name: self._pool(nodes[name], advertised.get(name, ()), pool_keys.get(name, ())) for name in names}
        offering: dict[str, list[str]] = {}  # resource -> nodes with a free device of it when the pass began
        for name in names:
            for resource, refs in pools[name].by_resource.items():
                if refs:
                    offering.setdefault(resource, []).append(name)
        bound = 0
        for pod in todo:
            demand = demand_of(pod)
            ask = self._ask(demand)
            if ask in unservable:
                continue
            eligibility = demand.eligibility_key
            options: list[tuple[str, list[DeviceRef]]] = []
            for name in offering.get(_first_resource(demand), []):  # only nodes that can have the first device
                pool = pools[name]
                if not pool or not self._passes(nodes[name], demand, eligibility, meta_version):
                    continue
                devices = pick_devices(demand, pool)
                if devices is not None:
                    options.append((name, devices))
            if not options:
                unservable.add(ask)
                continue
            name, devices = options[self._rng.randrange(len(options))] if len(options) > 1 else options[0]
            self._pools[name][1].take(devices)
            bind(pod, name, devices)
            bound += 1
        return bound
