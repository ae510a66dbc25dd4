"""Between the planner's `ClusterSnapshot` and the twin's state, both ways.

Loading: GPUs and instances as listed (profile names made canonical), the operator's default deploy labels
filled in, running pods rebuilt from the instances that name them (each asks, if re-created, for the same
devices), pending pods queued in snapshot order. Observing: nodes with labels, annotations, taints, cordons,
the device plugin's allocatable and the layouts with holders; running pods; pending pods.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from nvidia_protocol.labels import OPERATOR_DEFAULTED_LABELS
from simulations.twin.device_plugin import DevicePlugin
from simulations.twin.state import DeviceRef, PodSpec, TwinGpu, TwinInstance, TwinNode
from simulations.twin.workload import PodStore, as_pending
from solver.profiles import MIG_RESOURCE_PREFIX, resource_name
from solver.protection import Protection
from solver.snapshot import (
    GPU_RESOURCE,
    PRODUCT_LABEL,
    ClusterSnapshot,
    GpuState,
    InstanceState,
    NodeState,
    RunningPod,
)


def is_device_resource(key: str) -> bool:
    return key == GPU_RESOURCE or key.startswith(MIG_RESOURCE_PREFIX)


def node_from_state(state: NodeState) -> TwinNode:
    labels = dict(state.labels)
    for label in OPERATOR_DEFAULTED_LABELS:
        if not labels.get(label):
            labels[label] = "true"
    gpus = [
        TwinGpu(
            index=g.index,
            model=g.gpu_model.key,
            instances=[
                TwinInstance(profile=g.gpu_model.profile(i.profile).name, start=i.start, pod=i.pod)
                for i in sorted(g.instances, key=lambda i: i.start)
            ],
        )
        for g in sorted(state.gpus, key=lambda g: g.index)
    ]
    return TwinNode(
        name=state.name, labels=labels, annotations=dict(state.annotations), taints=list(state.taints),
        unschedulable=state.unschedulable, gpus=gpus, strategy=state.strategy,
        other_allocatable={k: v for k, v in state.allocatable.items() if not k.startswith("nvidia.com/")},
    )  # fmt: skip


def registered_resources(state: NodeState) -> dict[str, int]:
    """Device resources the node already carried: kept (at 0 once no longer advertised)."""
    return {k: v for k, v in state.allocatable.items() if is_device_resource(k)}


def _holdings(nodes: Mapping[str, TwinNode]) -> dict[str, tuple[str, list[DeviceRef]]]:
    held: dict[str, tuple[str, list[DeviceRef]]] = {}
    for node in nodes.values():
        for gpu in node.gpus:
            for inst in gpu.instances:
                if inst.pod:
                    where, devices = held.setdefault(inst.pod, (node.name, []))
                    if where == node.name:
                        devices.append(DeviceRef(gpu=gpu.index, start=inst.start, profile=inst.profile))
                    else:  # one pod on two nodes cannot happen; keep the first node's devices only
                        inst.pod = None
    return held


def _replacement_request(node: TwinNode, devices: list[DeviceRef]) -> tuple[dict[str, int], dict[str, str]]:
    """What a re-created copy of a running pod asks for: its devices' resources (single: product selector)."""
    profiles = {d.profile for d in devices}
    if node.strategy == "single" and len(profiles) == 1:
        model = node.gpu(devices[0].gpu).gpu_model
        product = f"{model.gfd_products[0]}-MIG-{profiles.pop()}"
        return {GPU_RESOURCE: len(devices)}, {PRODUCT_LABEL: product}
    return dict(Counter(resource_name(d.profile) for d in devices)), {}


def load_pods(snapshot: ClusterSnapshot, nodes: Mapping[str, TwinNode], store: PodStore) -> None:
    """Running pods from the instances that name them, then the pending pods in snapshot order."""
    for name, (node_name, devices) in sorted(_holdings(nodes).items()):
        info = snapshot.running_pod(name)
        requests, selector = _replacement_request(nodes[node_name], devices)
        spec = PodSpec(
            requests=requests, node_selector=selector, priority=info.priority, evictable=info.evictable,
            protection=info.protection,
        )  # fmt: skip
        store.adopt_running(name, spec, node_name, devices)
    for pod in snapshot.pods:
        spec = PodSpec(
            requests=pod.requests, priority=pod.priority, node_selector=pod.node_selector,
            node_affinity=pod.node_affinity, tolerations=pod.tolerations,
        )  # fmt: skip
        store.add(pod.name, spec)


GpuCache = dict[str, tuple[tuple[object, ...], list[GpuState]]]


def _gpu_states(node: TwinNode, cache: GpuCache) -> list[GpuState]:
    """The node's GPUs as the snapshot shows them, rebuilt only when a layout or a holder changed: the
    controller reads the whole cluster every tick, and most nodes are as they were."""
    key = tuple(
        (g.index, g.model, g.mig_enabled, tuple((i.profile, i.start, i.pod) for i in g.instances)) for g in node.gpus
    )
    cached = cache.get(node.name)
    if cached is None or cached[0] != key:
        states = [
            GpuState(
                index=g.index, model=g.model,
                instances=[InstanceState(profile=i.profile, start=i.start, pod=i.pod) for i in g.instances]
                if g.mig_enabled else [],
            )
            for g in node.gpus
        ]  # fmt: skip
        cached = cache[node.name] = (key, states)
    return cached[1]


def _protection(spec: PodSpec) -> Protection | None:
    """The pod's reason, when it has one; a pod only flagged not evictable (`Twin.add_pod(evictable=False)`) gets
    the snapshot's `unspecified`."""
    if spec.evictable:
        return None
    return spec.protection or Protection.UNSPECIFIED


def to_snapshot(
    nodes: Mapping[str, TwinNode], plugins: Mapping[str, DevicePlugin], store: PodStore, cache: GpuCache | None = None
) -> ClusterSnapshot:
    """The cluster as the controller would read it now."""
    gpu_cache: GpuCache = {} if cache is None else cache
    states = [
        NodeState(
            name=node.name, labels=dict(node.labels), annotations=dict(node.annotations),
            allocatable=dict(node.other_allocatable) | dict(plugins[node.name].allocatable),
            taints=list(node.taints), unschedulable=node.unschedulable, gpus=_gpu_states(node, gpu_cache),
        )
        for node in nodes.values()
    ]  # fmt: skip
    running = [
        RunningPod(name=p.name, priority=p.spec.priority, protection=_protection(p.spec))
        for p in sorted(store.running(), key=lambda p: p.name)
        if p.devices
    ]
    return ClusterSnapshot(nodes=states, pods=[as_pending(p) for p in store.pending()], running=running)
