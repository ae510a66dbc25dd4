"""The pods of the twin and their lifecycle: queued, bound to MIG devices, finished or deleted, re-created.

A pod's devices are marked on the GPU instances it holds (the `pod` of each instance), which is what
mig-parted sees as "in use" and what the snapshot reports as holders. A controller-owned pod that is evicted
comes back as a new pending pod with the same spec, named `<origin>-r<N>` (a Deployment or Job would).
"""

from __future__ import annotations

from collections.abc import Mapping

from simulations.twin.clock import SimClock
from simulations.twin.state import DeviceRef, PodPhase, PodSpec, TwinNode, TwinPod
from solver.demand import Demand, PriorityWeights, demands
from solver.errors import MigoptError
from solver.snapshot import ClusterSnapshot, PendingPod, parse_snapshot


def as_pending(pod: TwinPod) -> PendingPod:
    spec = pod.spec
    return PendingPod(
        name=pod.name, requests=spec.requests, priority=spec.priority, node_selector=spec.node_selector,
        node_affinity=spec.node_affinity, tolerations=spec.tolerations,
    )  # fmt: skip


class PodStore:
    """Every pod the twin has seen, by name, with the operations that move it through its life."""

    def __init__(self, clock: SimClock, nodes: Mapping[str, TwinNode]) -> None:
        self._clock = clock
        self._nodes = nodes
        self.pods: dict[str, TwinPod] = {}
        self._pending: dict[str, TwinPod] = {}  # the queue, kept as pods come and go rather than found by a scan
        self._running: dict[str, TwinPod] = {}
        self._arrivals = 0
        self._replicas: dict[str, int] = {}
        self._demands: dict[str, Demand] = {}
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
        self.pods[name] = pod
        self._pending[name] = pod
        self.version += 1
        return pod

    def add(self, name: str, spec: PodSpec, origin: str | None = None) -> TwinPod:
        """Queue a pending pod; its request must be one the planner can read (`parse_snapshot` rules)."""
        pending = PendingPod(
            name=name, requests=spec.requests, priority=spec.priority, node_selector=spec.node_selector,
            node_affinity=spec.node_affinity, tolerations=spec.tolerations,
        )  # fmt: skip
        parse_snapshot(ClusterSnapshot(pods=[pending]).model_dump(by_alias=True))
        pod = self._new(name, spec, origin)
        self._demands[name] = demands(ClusterSnapshot(pods=[pending]), PriorityWeights([]))[0]
        return pod

    def adopt_running(self, name: str, spec: PodSpec, node: str, devices: list[DeviceRef]) -> TwinPod:
        """A pod already running when the twin began (it holds the instances that name it)."""
        pod = self._new(name, spec, None)
        pod.phase, pod.node, pod.devices, pod.started_at = PodPhase.RUNNING, node, devices, self._clock.now
        self._pending.pop(name, None)
        self._running[name] = pod
        return pod

    def demand(self, pod: TwinPod) -> Demand:
        return self._demands[pod.name]

    def pending(self) -> list[TwinPod]:
        """Pending pods in scheduling-queue order: priority descending, then arrival."""
        return sorted(self._pending.values(), key=lambda p: (-p.spec.priority, p.arrival))

    def running(self) -> list[TwinPod]:
        return list(self._running.values())

    def bind(self, pod: TwinPod, node: str, devices: list[DeviceRef]) -> None:
        """Start the pod on `node` holding `devices`; schedule its completion if it has a duration."""
        gpus = {g.index: g for g in self._nodes[node].gpus}
        for ref in devices:
            instance = gpus[ref.gpu].instance_at(ref.start)
            if instance is None or instance.pod is not None:
                raise RuntimeError(f"twin bug: {node} GPU {ref.gpu} device at {ref.start} is not free")
            instance.pod = pod.name
        pod.phase, pod.node, pod.devices, pod.started_at = PodPhase.RUNNING, node, list(devices), self._clock.now
        self._pending.pop(pod.name, None)
        self._running[pod.name] = pod
        self._touch(node)
        if pod.spec.duration_s is not None:
            started = pod.started_at
            self._clock.call_in(pod.spec.duration_s, lambda: self._complete(pod, started))

    def _complete(self, pod: TwinPod, started: float) -> None:
        if pod.active and pod.phase == PodPhase.RUNNING and pod.started_at == started:
            self._release(pod)
            self._running.pop(pod.name, None)
            pod.phase, pod.finished_at = PodPhase.SUCCEEDED, self._clock.now

    def _touch(self, node: str) -> None:
        self.version += 1
        self.holdings_version[node] = self.holdings_version.get(node, 0) + 1

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
        self._pending.pop(pod.name, None)
        self._running.pop(pod.name, None)
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
