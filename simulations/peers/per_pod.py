"""What HAMi's dynamic MIG and the DRA driver's DynamicMIG share, as a scheduler in the twin.

Both decide, per pod, a node and an exact placement for each device (HAMi's extender at Filter, kube-scheduler's
structured allocator); record it (a pod annotation, a ResourceClaim's allocation), so the next pod sees those
slices taken; bind the pod; and only then create the instance on the node, behind a node-wide lock (HAMi's
Allocate, the driver's NodePrepareResources). No layout is ever rebuilt, no pod evicted, nothing moved: a pod that
fits nowhere stays Pending and is tried again when capacity frees (spec dynamic-mig-peers §4).

In the twin: `run` walks the queue, grants a pod its slots and assigns it to the node (it leaves the queue, as a
bound pod does); the node's lock creates the instances after the peer's latency and starts the pod on them. When
a pod ends, the peer says when its slots free and its instances go (`released`). Any free instance on the node
is a leftover of an ended pod, so the lock destroys those in the way before creating (HAMi reconciles before
each Allocate; the driver's are gone by then). Both start as their plugins do: free instances destroyed
(HAMi's `ResetIdleGPUs`, the driver's `DestroyUnknownMIGDevices`), held ones adopted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

from simulations.twin.cluster import Twin
from simulations.twin.node_lock import NodeLock
from simulations.twin.occupancy import Occupancy, mask
from simulations.twin.queue import Ask, PendingQueue
from simulations.twin.scheduler import Binder, SchedulingView, filter_view
from simulations.twin.state import DeviceRef, SizedRequest, TwinPod, device_ref
from solver.catalog import GpuModel, Profile
from solver.demand import Demand, rejection


@dataclass(frozen=True, slots=True)
class Slot:
    """One device a pod was granted: a profile at a placement on one GPU of its node."""

    gpu: int
    profile: Profile
    start: int

    @property
    def ref(self) -> DeviceRef:
        return device_ref(self.gpu, self.start, self.profile.name)


@dataclass
class GpuView:
    """One GPU as the peer's scheduler sees it: the slots granted to pods that have not ended."""

    index: int
    model: GpuModel
    taken: Occupancy = field(default_factory=Occupancy.empty)
    instances: int = 0
    memory_mib: int = 0

    def add(self, slot: Slot) -> None:
        self.taken = self.taken.plus(slot.profile, slot.start)
        self.instances += 1
        self.memory_mib += slot.profile.memory_mib

    def remove(self, slot: Slot) -> None:
        self.taken = self.taken.minus(slot.profile, slot.start)
        self.instances -= 1
        self.memory_mib -= slot.profile.memory_mib


@dataclass
class NodeView:
    """One node's GPUs as granted, its lock, and answers kept while its grants stay as they are: where each sized
    request would go (`fits`), and the peer's score of the node (`score`)."""

    name: str
    gpus: list[GpuView]
    lock: NodeLock
    fits: dict[tuple[SizedRequest, ...], tuple[Slot, ...] | None] = field(default_factory=dict)
    score: float | None = None

    def changed(self) -> None:
        self.fits.clear()
        self.score = None


@dataclass
class Grant:
    pod: str
    node: str
    slots: tuple[Slot, ...]
    started: bool = False


Choice = tuple[NodeView, tuple[Slot, ...]]
Fit = Callable[[NodeView, tuple[SizedRequest, ...]], "tuple[Slot, ...] | None"]


def fit_on(node: NodeView, sized: tuple[SizedRequest, ...], fit: Fit) -> tuple[Slot, ...] | None:
    """`fit(node, sized)`, worked out once until the node's grants change."""
    if sized not in node.fits:
        node.fits[sized] = fit(node, sized)
    return node.fits[sized]


class PerPodScheduler(ABC):
    """The twin's scheduler for a per-pod allocator (`simulations.twin.scheduler.PodScheduler`)."""

    def __init__(self, twin: Twin, create_s: float) -> None:
        self.twin = twin
        self._create_s = create_s
        self.nodes: dict[str, NodeView] = {}
        self.grants: dict[str, Grant] = {}
        self._by_node: dict[str, set[str]] = {}
        self._growth: tuple[int, ...] = ()
        self._unservable: set[Ask] = set()
        self._filters: dict[object, dict[str, tuple[int, bool]]] = {}
        self._checking: set[str] = set()
        self._start_up()

    @property
    def plans(self) -> int:
        """Nothing is planned ahead: each pod is placed when its turn comes."""
        return 0

    @property
    def reconfigurations(self) -> int:
        """No layout is rebuilt: instances come and go one by one (counted by the twin's `instances_created`)."""
        return 0

    # ---- what each peer decides ---------------------------------------------------------------------------

    @abstractmethod
    def choose(self, sized: tuple[SizedRequest, ...], nodes: list[NodeView]) -> Choice | None:
        """The node and slots for a pod among the nodes its filters allow, or None when none fits."""

    @abstractmethod
    def released(self, grant: Grant) -> None:
        """The grant's pod ended: free its slots (`free`) and destroy its instances (`destroy_free`) when this peer
        does."""

    # ---- PodScheduler ---------------------------------------------------------------------------------------

    def run(
        self,
        queue: PendingQueue,
        demand_of: Callable[[TwinPod], Demand],
        cluster: SchedulingView,
        bind: Binder,
        growth: tuple[int, ...] = (),
    ) -> int:
        """One pass: every pod that fits gets its slots and is assigned; returns 0 (pods start later)."""
        if growth != self._growth:
            self._growth, self._unservable = growth, set()
        unservable = self._unservable  # slots only get taken meanwhile: same ask, same answer
        for pod, ask in queue.walk(unservable):
            sized = pod.spec.at_least
            choice = self.choose(sized, self._allowed(demand_of(pod), cluster)) if sized else None
            if choice is None:
                unservable.add(ask)
                continue
            node, slots = choice
            self._grant(pod.name, node, slots)
        return 0

    def node_changed(self, name: str) -> None:
        """Devices changed hands on the node: a pod granted there may have ended. The twin says so while the pod is
        still being wound up, so the check runs as the next event at this instant."""
        if name in self._checking or not self._by_node.get(name):
            return
        self._checking.add(name)
        self.twin.clock.call_in(0.0, partial(self._check_ended, name))

    def _check_ended(self, name: str) -> None:
        self._checking.discard(name)
        for pod in list(self._by_node.get(name, ())):
            grant = self.grants[pod]
            if grant.started and not self.twin.pod(pod).active:
                del self.grants[pod]
                self._by_node[name].discard(pod)
                self.released(grant)

    def forget(self) -> None:
        self._growth, self._unservable = (), set()
        self._filters.clear()

    # ---- shared mechanics -----------------------------------------------------------------------------------

    def free(self, grant: Grant) -> None:
        """The grant's slots are no longer taken, as the scheduler sees them."""
        node = self.nodes[grant.node]
        gpus = {g.index: g for g in node.gpus}
        for slot in grant.slots:
            gpus[slot.gpu].remove(slot)
        node.changed()
        self.twin.allocator_freed()

    def destroy_free(self, node: str, where: tuple[Slot, ...] | None = None) -> None:
        """Destroy the instances on the node that no pod holds (leftovers of ended pods): all of them, or those that
        overlap one of `where`'s slots."""
        for gpu in self.twin.node(node).gpus:
            model = gpu.gpu_model
            wanted = [mask(s.profile, s.start) for s in where or () if s.gpu == gpu.index]
            for instance in [i for i in gpu.instances if i.pod is None]:
                if where is None or any(m & mask(model.profile(instance.profile), instance.start) for m in wanted):
                    self.twin.destroy_instance(node, gpu.index, instance.start)

    def _start_up(self) -> None:
        for name, node in sorted(self.twin.nodes.items()):
            self.destroy_free(name)
            view = NodeView(name=name, gpus=[], lock=NodeLock(self.twin.clock))
            for gpu in sorted(node.gpus, key=lambda g: g.index):
                if gpu.mig_enabled:
                    view.gpus.append(GpuView(index=gpu.index, model=gpu.gpu_model))
            self.nodes[name] = view
            held: dict[str, list[Slot]] = {}
            for gpu in node.gpus:
                for instance in gpu.instances:
                    if instance.pod is not None:
                        slot = Slot(gpu.index, gpu.gpu_model.profile(instance.profile), instance.start)
                        held.setdefault(instance.pod, []).append(slot)
            for pod, slots in held.items():
                self._record(Grant(pod=pod, node=name, slots=tuple(slots), started=True))

    def _record(self, grant: Grant) -> None:
        node = self.nodes[grant.node]
        gpus = {g.index: g for g in node.gpus}
        for slot in grant.slots:
            gpus[slot.gpu].add(slot)
        node.changed()
        self.grants[grant.pod] = grant
        self._by_node.setdefault(grant.node, set()).add(grant.pod)

    def _grant(self, pod: str, node: NodeView, slots: tuple[Slot, ...]) -> None:
        grant = Grant(pod=pod, node=node.name, slots=slots)
        self._record(grant)
        self.twin.assign_pod(pod, node.name)
        node.lock.submit(self._create_s, lambda: self._create(grant))

    def _create(self, grant: Grant) -> None:
        """The node lock's turn: clear leftovers, create the pod's instances, start it."""
        if not self.twin.pod(grant.pod).active:  # deleted while it waited: nothing to create
            del self.grants[grant.pod]
            self._by_node[grant.node].discard(grant.pod)
            self.free(grant)
            return
        self.destroy_free(grant.node, grant.slots)
        for slot in grant.slots:
            self.twin.create_instance(grant.node, slot.gpu, slot.profile.name, slot.start)
        grant.started = True
        self.twin.start_pod(grant.pod, grant.node, [slot.ref for slot in grant.slots])

    def _allowed(self, demand: Demand, cluster: SchedulingView) -> list[NodeView]:
        """The nodes whose filters (selector, affinity, taints, cordon, strategy) let the pod in, by name."""
        verdicts = self._filters.setdefault(demand.eligibility_key, {})
        revisions: Mapping[str, int] = cluster.revisions
        allowed = []
        for name, view in self.nodes.items():
            revision = revisions.get(name, 0)
            verdict = verdicts.get(name)
            if verdict is None or verdict[0] != revision:
                passes = rejection(filter_view(self.twin.node(name)), demand) is None
                verdict = verdicts[name] = (revision, passes)
            if verdict[1]:
                allowed.append(view)
        return allowed
