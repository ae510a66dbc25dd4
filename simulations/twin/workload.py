"""The pods of the twin and their lifecycle: queued, bound to MIG devices, finished or deleted, re-created.

A pod's devices are marked on the GPU instances it holds (the `pod` of each instance), which is what
mig-parted sees as "in use" and what the snapshot reports as holders. A controller-owned pod that is evicted
comes back as a new pending pod with the same spec, named `<origin>-r<N>` (a Deployment or Job would).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping

from simulations.twin.clock import SimClock
from simulations.twin.queue import PendingQueue, ask_of
from simulations.twin.state import DeviceRef, PodEdits, PodPhase, PodSpec, TwinNode, TwinPod
from solver.demand import Demand, PriorityWeights, demands
from solver.errors import MigoptError
from solver.protection import Protection
from solver.snapshot import PRODUCT_LABEL, ClusterSnapshot, PendingPod, RunningPod, check_pending_pod

NodeListener = Callable[[str], None]


def as_pending(pod: TwinPod) -> PendingPod:
    spec = pod.spec
    return PendingPod(
        name=pod.name, requests=spec.requests, priority=spec.priority, node_selector=spec.node_selector,
        node_affinity=spec.node_affinity, tolerations=spec.tolerations,
    )  # fmt: skip


class PodStore:
    """Every pod the twin has seen, by name, with the operations that move it through its life."""

    def __init__(self, clock: SimClock, nodes: Mapping[str, TwinNode], on_holdings: NodeListener | None = None) -> None:
        """`on_holdings` hears the name of every node whose devices change hands (the scheduler's pools)."""
        self._clock = clock
        self._nodes = nodes
        self._on_holdings = on_holdings
        self.pods: dict[str, TwinPod] = {}
        self.queue = PendingQueue()  # kept as pods come and go rather than found by a scan
        self._running: dict[str, TwinPod] = {}
        self._pending_views: dict[str, tuple[PodSpec, PendingPod]] = {}  # what the snapshot shows of each pod
        self._running_views: dict[str, tuple[PodSpec, RunningPod]] = {}
        self._shown = _ShownRunning()  # the running pods holding devices, as the snapshot lists them
        self._pod_edits = PodEdits()  # pods whose spec or devices were assigned, or that started or stopped
        self._arrivals = 0
        self._replicas: dict[str, int] = {}
        self._demands: dict[str, Demand] = {}
        self._reads: dict[tuple[object, ...], tuple[str, tuple[tuple[str, int], ...], int]] = {}
        self.version = 0  # bumped whenever a pod arrives or devices change hands
        self.holdings_version: dict[str, int] = {}  # per node: bumped when its devices change hands
        self.released_version = 0  # bumped whenever a pod frees devices: the only way free capacity grows

    def active(self, name: str) -> TwinPod | None:
        pod = self.pods.get(name)
        return pod if pod is not None and pod.active else None

    def _new(self, name: str, spec: PodSpec, origin: str | None) -> TwinPod:
        if self.active(name) is not None:
            raise MigoptError(f"pod {name!r} already exists")
        self._arrivals += 1
        pod = TwinPod(name=name, origin=origin or name, spec=spec, arrival=self._arrivals, created_at=self._clock.now)
        pod.report_to(self._pod_edits)
        self.pods[name] = pod
        self.version += 1
        return pod

    def add(self, name: str, spec: PodSpec, origin: str | None = None) -> TwinPod:
        """Queue a pending pod; its request must be one the planner can read (`parse_snapshot` rules)."""
        pending = PendingPod(
            name=name, requests=spec.requests, priority=spec.priority, node_selector=spec.node_selector,
            node_affinity=spec.node_affinity, tolerations=spec.tolerations,
        )  # fmt: skip
        read = self._read(pending)
        pod = self._new(name, spec, origin)
        demand = self._demands[name] = Demand(pod=pending, kind=read[0], resources=read[1], weight=read[2])
        self.queue.add(pod, ask_of(demand))
        self._pending_views[name] = (spec, demand.pod)
        return pod

    def _read(self, pending: PendingPod) -> tuple[str, tuple[tuple[str, int], ...], int]:
        """The pod's request as the planner reads it (kind, resource keys, weight), checked as `parse_snapshot`
        checks a pod; worked out once per distinct request: a trace repeats a few hundred of them."""
        shape = (tuple(sorted(pending.requests.items())), pending.node_selector.get(PRODUCT_LABEL))
        read = self._reads.get(shape)
        if read is None:
            check_pending_pod(pending)  # the model already validated its fields; this checks them against the catalog
            alone = ClusterSnapshot.model_construct(pods=[pending])  # one pod: nothing to check across pods
            demand = demands(alone, PriorityWeights([]))[0]  # no other priorities: the weight does not depend on it
            read = self._reads[shape] = (demand.kind, demand.resources, demand.weight)
        return read

    def adopt_running(self, name: str, spec: PodSpec, node: str, devices: list[DeviceRef]) -> TwinPod:
        """A pod already running when the twin began (it holds the instances that name it)."""
        pod = self._new(name, spec, None)
        pod.phase, pod.node, pod.devices, pod.started_at = PodPhase.RUNNING, node, devices, self._clock.now
        self._start(pod)
        return pod

    def demand(self, pod: TwinPod) -> Demand:
        return self._demands[pod.name]

    def pending(self) -> list[TwinPod]:
        """Pending pods in scheduling-queue order: priority descending, then arrival."""
        return list(self.queue)

    def pending_views(self) -> list[PendingPod]:
        """Pending pods as the snapshot shows them, in queue order; each made once per pod and spec (a spec is frozen,
        so a pod whose spec was replaced gets a new one)."""
        views = []
        for pod in self.queue:
            cached = self._pending_views.get(pod.name)
            if cached is None or cached[0] is not pod.spec:
                cached = self._pending_views[pod.name] = (pod.spec, as_pending(pod))
            views.append(cached[1])
        return views

    def running(self) -> list[TwinPod]:
        return list(self._running.values())

    def running_views(self) -> list[RunningPod]:
        """Running pods holding devices as the snapshot shows them, by name; each made once per pod and spec. The
        list is kept between reads and redone only for the pods that started, stopped, or had their spec or devices
        assigned since (`PodEdits`): at trace scale thousands run and a few dozen change between two reads."""
        edited = self._pod_edits.names
        for name in edited:
            pod = self._running.get(name)
            self._shown.put(name, self._running_view(pod) if pod is not None and pod.devices else None)
        edited.clear()
        return self._shown.views()

    def _running_view(self, pod: TwinPod) -> RunningPod:
        cached = self._running_views.get(pod.name)
        if cached is None or cached[0] is not pod.spec:
            view = RunningPod(name=pod.name, priority=pod.spec.priority, protection=_protection(pod.spec))
            cached = self._running_views[pod.name] = (pod.spec, view)
        return cached[1]

    def bind(self, pod: TwinPod, node: str, devices: list[DeviceRef]) -> None:
        """Start the pod on `node` holding `devices`; schedule its completion if it has a duration."""
        gpus = {g.index: g for g in self._nodes[node].gpus}
        for ref in devices:
            instance = gpus[ref.gpu].instance_at(ref.start)
            if instance is None or instance.pod is not None:
                raise RuntimeError(f"twin bug: {node} GPU {ref.gpu} device at {ref.start} is not free")
            instance.pod = pod.name
        pod.phase, pod.node, pod.devices, pod.started_at = PodPhase.RUNNING, node, list(devices), self._clock.now
        self._dequeue(pod)
        self._start(pod)
        self._touch(node)
        if pod.spec.duration_s is not None:
            started = pod.started_at
            self._clock.call_in(pod.spec.duration_s, lambda: self._complete(pod, started))

    def assign(self, pod: TwinPod, node: str) -> None:
        """The scheduler's Bind for a pod whose devices do not exist yet: it leaves the queue with its node named and
        starts when `bind` gives it the devices its node's allocator created (it is Pending meanwhile, as a pod is
        while kubelet prepares it)."""
        if pod.name not in self.queue:
            raise ValueError(f"pod {pod.name!r} is not waiting for the scheduler")
        self._dequeue(pod)
        pod.node = node
        self.version += 1

    def _complete(self, pod: TwinPod, started: float) -> None:
        if pod.active and pod.phase == PodPhase.RUNNING and pod.started_at == started:
            self._release(pod)
            self._stop(pod)
            pod.phase, pod.finished_at = PodPhase.SUCCEEDED, self._clock.now

    def _dequeue(self, pod: TwinPod) -> None:
        self.queue.remove(pod)
        self._pending_views.pop(pod.name, None)

    def _start(self, pod: TwinPod) -> None:
        self._running[pod.name] = pod
        self._pod_edits.names.add(pod.name)

    def _stop(self, pod: TwinPod) -> None:
        self._running.pop(pod.name, None)
        self._pod_edits.names.add(pod.name)
        self._running_views.pop(pod.name, None)

    def _touch(self, node: str) -> None:
        self.version += 1
        self.holdings_version[node] = self.holdings_version.get(node, 0) + 1
        if self._on_holdings is not None:
            self._on_holdings(node)

    def _release(self, pod: TwinPod) -> None:
        self._touch(pod.node or "")
        self.released_version += 1
        node = self._nodes.get(pod.node or "")
        if node is None:
            return
        for ref in pod.devices:
            gpu = next((g for g in node.gpus if g.index == ref.gpu), None)
            instance = gpu.instance_at(ref.start) if gpu is not None else None
            if instance is not None and instance.pod == pod.name:
                instance.pod = None

    def delete(self, pod: TwinPod) -> None:
        """Remove the pod now, freeing its devices."""
        self._release(pod)
        self._dequeue(pod)
        self._stop(pod)
        pod.deleted_at = self._clock.now

    def terminate(self, pod: TwinPod, grace_period_s: float) -> None:
        """Deletion requested but the process ignores SIGTERM: it keeps its devices until the grace period ends."""
        pod.terminating_since = self._clock.now
        self._clock.call_in(grace_period_s, lambda: self.delete(pod) if pod.active else None)

    def recreate(self, pod: TwinPod) -> TwinPod:
        """The owning controller's replacement: same spec, pending, `<origin>-r<N>`."""
        count = self._replicas.get(pod.origin, 0)
        name = pod.origin
        while name in self.pods:  # never reuse a name, so every pod's history stays readable
            count += 1
            name = f"{pod.origin}-r{count}"
        self._replicas[pod.origin] = count
        return self.add(name, pod.spec, origin=pod.origin)


def _protection(spec: PodSpec) -> Protection | None:
    """The pod's reason, when it has one; a pod only flagged not evictable (`Twin.add_pod(evictable=False)`) gets
    the snapshot's `unspecified`."""
    if spec.evictable:
        return None
    return spec.protection or Protection.UNSPECIFIED


class _ShownRunning:
    """Running pods' snapshot entries sorted by name, with a name's entry replaced or dropped in place."""

    def __init__(self) -> None:
        self._names: list[str] = []
        self._views: list[RunningPod] = []

    def put(self, name: str, view: RunningPod | None) -> None:
        """`name`'s entry becomes `view`; None drops it."""
        at = bisect_left(self._names, name)
        present = at < len(self._names) and self._names[at] == name
        if view is None:
            if present:
                del self._names[at], self._views[at]
        elif present:
            self._views[at] = view
        else:
            self._names.insert(at, name)
            self._views.insert(at, view)

    def views(self) -> list[RunningPod]:
        return list(self._views)
