"""Between the planner's `ClusterSnapshot` and the twin's state, both ways.

Loading: GPUs and instances as listed (profile names made canonical), the operator's default deploy labels
filled in, running pods rebuilt from the instances that name them (each asks, if re-created, for the same
devices), pending pods queued in snapshot order. Observing: nodes with labels, annotations, taints, cordons,
the device plugin's allocatable and the layouts with holders; running pods; pending pods.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from functools import cache
from operator import is_
from typing import NamedTuple

from nvidia_protocol.labels import OPERATOR_DEFAULTED_LABELS
from simulations.twin.device_plugin import DevicePlugin
from simulations.twin.state import (
    DeviceRef,
    EditCount,
    LayoutStamp,
    PodSpec,
    TwinGpu,
    TwinInstance,
    TwinNode,
    edits_of,
)
from simulations.twin.workload import PodStore
from solver.catalog import load_catalog
from solver.profiles import MIG_RESOURCE_PREFIX, resource_name
from solver.snapshot import (
    GPU_RESOURCE,
    PRODUCT_LABEL,
    ClusterSnapshot,
    GpuState,
    InstanceState,
    NodeState,
    Taint,
)


def is_device_resource(key: str) -> bool:
    return key == GPU_RESOURCE or key.startswith(MIG_RESOURCE_PREFIX)


@cache
def _model_key(model: str) -> str:
    """The catalog key of a GPU model named any way (looked up once per name: a cluster repeats a few models)."""
    return load_catalog().model(model).key


@cache
def _profile_name(model: str, profile: str) -> str:
    """The canonical name of the model's profile, once per (model, profile)."""
    return load_catalog().model(model).profile(profile).name


def node_from_state(state: NodeState) -> TwinNode:
    labels = dict(state.labels)
    for label in OPERATOR_DEFAULTED_LABELS:
        if not labels.get(label):
            labels[label] = "true"
    gpus = [
        TwinGpu(
            index=g.index,
            model=_model_key(g.model),
            instances=[
                TwinInstance(profile=_profile_name(g.model, i.profile), start=i.start, pod=i.pod)
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


class _GpuPiece(NamedTuple):
    """A GPU's state as the snapshot shows it, with what it was made from."""

    gpu: TwinGpu
    edits: int
    instances: list[TwinInstance]
    length: int
    state: GpuState


class SnapshotCache:
    """The snapshot's per-node pieces from the last read, reused while the node is as it was: the controller reads
    the whole cluster every tick, and at trace scale most nodes have not changed since the last read.

    A GPU's state is reused while no field of it or of its instances was assigned (`TwinGpu.watch`) and its
    instance list is the same object of the same length; a node's other fields are compared with what its piece
    was made from. Either way direct edits of the twin's objects are seen too: no one has to invalidate anything.
    """

    def __init__(self) -> None:
        self._gpus: dict[str, tuple[tuple[object, ...], list[_GpuPiece], list[GpuState]]] = {}
        self._nodes: dict[str, tuple[list[GpuState], NodeState]] = {}  # with the GPU states it was made from
        self._shown: dict[str, _Shown] = {}  # node -> the state last returned, with the node's layout stamp

    def gpu_states(self, node: TwinNode) -> list[GpuState]:
        """The node's GPUs as the snapshot shows them; only GPUs whose layout or holders changed are rebuilt."""
        mark = node.layout_mark()
        cached = self._gpus.get(node.name)
        if cached is not None and cached[0] == mark:
            return cached[2]
        before = {id(piece.gpu): piece for piece in cached[1]} if cached is not None else {}
        pieces = [_gpu_piece(gpu, node.edits, before.get(id(gpu))) for gpu in node.gpus]
        if cached is not None and len(pieces) == len(cached[1]) and all(map(is_, pieces, cached[1])):
            states = cached[2]  # a GPU no longer on the node moved the count: nothing shown changed
        else:
            states = [piece.state for piece in pieces]
        self._gpus[node.name] = (mark, pieces, states)
        return states

    def node_states(self, nodes: Iterable[TwinNode], plugins: Mapping[str, DevicePlugin]) -> list[NodeState]:
        """The nodes as the snapshot shows them, in order: a node's last state while nothing it shows changed."""
        shown = self._shown
        states = []
        for node in nodes:
            name = node.name
            plugin = plugins[name]
            last = shown.get(name)
            if last is None or not _still_shows(last, node, plugin):
                state = self._node_state(node, plugin)
                last = shown[name] = _Shown(
                    node.layout_stamp(), state, state.unschedulable, state.labels, state.annotations,
                    state.allocatable, state.taints,
                )  # fmt: skip
            states.append(last.state)
        return states

    def _node_state(self, node: TwinNode, plugin: DevicePlugin) -> NodeState:
        gpus = self.gpu_states(node)
        allocatable = node.other_allocatable | plugin.allocatable
        cached = self._nodes.get(node.name)
        if cached is not None:
            made_from, state = cached
            if (
                made_from is gpus
                and state.unschedulable == node.unschedulable
                and _same(state.labels, node.labels)
                and _same(state.annotations, node.annotations)
                and _same(state.allocatable, allocatable)
                and state.taints == node.taints
            ):
                return state
        state = NodeState(
            name=node.name, labels=dict(node.labels), annotations=dict(node.annotations), allocatable=allocatable,
            taints=list(node.taints), unschedulable=node.unschedulable, gpus=gpus,
        )  # fmt: skip
        self._nodes[node.name] = (gpus, state)
        return state


class _Shown(NamedTuple):
    """A node's last state, with the node's layout stamp (`TwinNode.layout_stamp`) when it was returned, and the
    state's fields `_still_shows` compares (held here: it reads them for every node on every read)."""

    stamp: LayoutStamp
    state: NodeState
    unschedulable: bool
    labels: dict[str, str]
    annotations: dict[str, str]
    allocatable: dict[str, int]
    taints: list[Taint]


def _still_shows(shown: _Shown, node: TwinNode, plugin: DevicePlugin) -> bool:
    """What `SnapshotCache._node_state` would find, in one go: the node's layout stamp stands (so the GPU states are
    the ones the node state was made from) and every other field reads as the node state shows it."""
    other = node.other_allocatable
    return (
        shown.stamp.stands(node)
        and shown.unschedulable == node.unschedulable
        and _same(shown.labels, node.labels)
        and _same(shown.annotations, node.annotations)
        and _same(shown.allocatable, other | plugin.allocatable if other else plugin.allocatable)
        and shown.taints == node.taints
    )


def _gpu_piece(gpu: TwinGpu, node_edits: EditCount, before: _GpuPiece | None) -> _GpuPiece:
    """The GPU's piece: `before` when nothing was assigned since, else made anew (and the GPU watched from now)."""
    if (
        before is not None
        and before.gpu is gpu
        and before.edits == edits_of(gpu).value
        and before.instances is gpu.instances
        and before.length == len(gpu.instances)
    ):
        return before
    edits = gpu.watch(node_edits)
    state = GpuState(
        index=gpu.index, model=gpu.model,
        instances=[InstanceState(profile=i.profile, start=i.start, pod=i.pod) for i in gpu.instances]
        if gpu.mig_enabled else [],
    )  # fmt: skip
    return _GpuPiece(gpu, edits.value, gpu.instances, len(gpu.instances), state)


def _same(a: Mapping[str, object], b: Mapping[str, object]) -> bool:
    """Equal, in the same order: a reused piece is the one a fresh read would make, down to its key order (the keys
    are mostly the very same objects, which settles the order without building lists)."""
    return a == b and (all(map(is_, a, b)) or list(a) == list(b))


def to_snapshot(
    nodes: Mapping[str, TwinNode],
    plugins: Mapping[str, DevicePlugin],
    store: PodStore,
    cache: SnapshotCache | None = None,
) -> ClusterSnapshot:
    """The cluster as the controller would read it now."""
    pieces = SnapshotCache() if cache is None else cache
    states = pieces.node_states(nodes.values(), plugins)
    # every piece is a validated model already, and names are unique (they key the twin's dicts): validating the
    # whole again would re-run each running pod's validator on every read
    return ClusterSnapshot.model_construct(nodes=states, pods=store.pending_views(), running=store.running_views())
