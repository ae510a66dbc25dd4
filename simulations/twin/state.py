"""What the twin's cluster holds: nodes, GPUs with their MIG instances, pods, disruption budgets, and the
records tests and reports assert on.

These are mutable pydantic models (the twin changes them as time passes); `convert.to_snapshot` turns them
into the planner's frozen `ClusterSnapshot`.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from functools import cache
from operator import attrgetter, is_
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from optimizer.controller.port import EvictionOutcome
from solver.catalog import GpuModel, load_catalog
from solver.protection import Protection
from solver.snapshot import NodeSelectorTerm, Taint, Toleration

Strategy = Literal["mixed", "single"]
_INSTANCES = attrgetter("instances")


class _Mutable(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EditCount:
    """How many field assignments a GPU (with its instances), or all GPUs of a node, had: what a cache derived from
    them (the snapshot's GPU states) stays valid while the count stands still. A GPU's count also moves its node's
    (`TwinGpu.watch`). Bookkeeping only: it never makes two models compare unequal."""

    __slots__ = ("parent", "value")

    def __init__(self) -> None:
        self.value = 0
        self.parent: EditCount | None = None

    def bump(self) -> None:
        self.value += 1
        if self.parent is not None:
            self.parent.value += 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EditCount)

    __hash__ = None  # type: ignore[assignment]


def edits_of(model: BaseModel) -> EditCount:
    """The model's counter, read where pydantic keeps private attributes (its `__getattr__` is slow at this rate)."""
    private = model.__pydantic_private__
    assert private is not None
    counter: EditCount = private["_edits"]
    return counter


class _Watched(_Mutable):
    """A GPU or an instance: every assignment of one of its fields moves the counter it reports to."""

    _edits: EditCount = PrivateAttr(default_factory=EditCount)

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if not name.startswith("_"):
            edits_of(self).bump()


class TwinInstance(_Watched):
    """One MIG device (a GPU instance with one full compute instance) and the pod holding it, if any."""

    profile: str
    start: int = Field(ge=0)
    pod: str | None = None


class TwinGpu(_Watched):
    index: int = Field(ge=0)
    model: str = Field(description="catalog key")
    mig_enabled: bool = True
    instances: list[TwinInstance] = []

    @property
    def gpu_model(self) -> GpuModel:
        return load_catalog().model(self.model)

    @property
    def holders(self) -> set[str]:
        return {i.pod for i in self.instances if i.pod}

    @property
    def mig_devices(self) -> dict[str, int]:
        """The current layout as a profile → count map: what mig-parted compares a desired map with."""
        return dict(Counter(i.profile for i in self.instances))

    def instance_at(self, start: int) -> TwinInstance | None:
        return next((i for i in self.instances if i.start == start), None)

    def watch(self, node: EditCount) -> EditCount:
        """From now on, count assignments of this GPU's fields and of its present instances' on the GPU's counter
        (returned), and on the node's. The instance list is not watched: it changes by assignment
        (`gpu.instances = [...]`, as mig-parted's twin does it); a cache follows it by identity and length."""
        own = edits_of(self)
        own.parent = node
        for instance in self.instances:
            private = instance.__pydantic_private__
            assert private is not None
            if private["_edits"] is not own:
                private["_edits"] = own
        return own


class LayoutStamp(NamedTuple):
    """A node's layout as `TwinNode.layout_mark` tells it apart, taken once its GPUs are watched: its edit count,
    and its GPUs and their instance lists themselves (held, so identity is what equal ids are to the mark)."""

    edits: int
    gpus: tuple[TwinGpu, ...]
    lists: tuple[list[TwinInstance], ...]
    lengths: tuple[int, ...]

    def stands(self, node: TwinNode) -> bool:
        """Whether `layout_mark` would still be what it was when the stamp was taken, without reading the GPUs
        themselves (a simulation asks this of every node every tick, and reading 8 GPUs' fields was most of it):
        the GPUs are the same, so watched from the stamp on, and replacing an instance list is an assignment on
        one of them, which moves the node's count; the lists left in place are the stamp's, whose lengths tell
        of a resize. (A GPU object on two nodes at once reports to the one that watched it last.)"""
        gpus = node.gpus
        return (
            edits_of(node).value == self.edits
            and len(gpus) == len(self.gpus)
            and all(map(is_, gpus, self.gpus))
            and tuple(map(len, self.lists)) == self.lengths
        )


HOSTNAME_LABEL = "kubernetes.io/hostname"
OS_LABEL = "kubernetes.io/os"
ARCH_LABEL = "kubernetes.io/arch"


def kubelet_labels(node: str) -> dict[str, str]:
    """The well-known labels kubelet puts on its node when it registers: pods select nodes by them (a pod pinned
    with `kubernetes.io/hostname`), so the twin's scheduler, its snapshot and its API facade all read them from the
    node's labels, set here once."""
    return {HOSTNAME_LABEL: node, OS_LABEL: "linux", ARCH_LABEL: "amd64"}


class TwinNode(_Mutable):
    name: str
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    taints: list[Taint] = []
    unschedulable: bool = False
    gpus: list[TwinGpu] = []
    strategy: Strategy = Field(default="mixed", description="the device plugin's MIG strategy (ClusterPolicy)")
    other_allocatable: dict[str, int] = Field(default={}, description="non-GPU resources, passed through")
    _edits: EditCount = PrivateAttr(default_factory=EditCount)

    def gpu(self, index: int) -> TwinGpu:
        return next(g for g in self.gpus if g.index == index)

    @property
    def edits(self) -> EditCount:
        """Moves with every assignment on a GPU it watches (`TwinGpu.watch`)."""
        return edits_of(self)

    def layout_mark(self) -> tuple[object, ...]:
        """Moves whenever a field of a watched GPU or instance is assigned, or a GPU or instance list is replaced or
        resized: while it stands still, what was derived from the node's GPUs then (`watch` them) still holds."""
        lists = list(map(_INSTANCES, self.gpus))
        return (edits_of(self).value, tuple(map(id, self.gpus)), tuple(map(id, lists)), tuple(map(len, lists)))

    def layout_stamp(self) -> LayoutStamp:
        """What `LayoutStamp.stands` compares with later; the node's GPUs are watched from now (`watch`)."""
        self.watch()
        gpus = tuple(self.gpus)
        lists = tuple(map(_INSTANCES, gpus))
        return LayoutStamp(edits_of(self).value, gpus, lists, tuple(map(len, lists)))

    def watch(self) -> None:
        """Watch every GPU of the node (and its present instances): see `TwinGpu.watch`."""
        for gpu in self.gpus:
            gpu.watch(edits_of(self))

    def register(self) -> None:
        """What kubelet does as the node joins: its well-known labels, unless the node already carries them."""
        for key, value in kubelet_labels(self.name).items():
            self.labels.setdefault(key, value)


class DeviceRef(_Record):
    """A MIG device as the device plugin advertises it and a pod holds it."""

    gpu: int
    start: int
    profile: str


@cache
def device_ref(gpu: int, start: int, profile: str) -> DeviceRef:
    """One shared value per device: a plugin re-registering a node's devices builds none anew."""
    return DeviceRef(gpu=gpu, start=start, profile=profile)


class PodPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"


class SizedRequest(_Record):
    """`count` MIG devices, each of at least this memory and compute: how a pod asks a per-pod allocator for a slice
    (HAMi's `nvidia.com/gpumem` with `nvidia.com/gpucores`, a DRA claim's capacity selector) instead of naming a
    profile. Compute is in compute slices, which order a model's plain profiles as their SM counts do."""

    count: int = Field(ge=1)
    memory_mib: int = Field(ge=1)
    compute_slices: int = Field(ge=1)


class PodSpec(_Record):
    """What a pod asks for and how it behaves; a re-created pod copies it."""

    requests: dict[str, int]
    at_least: tuple[SizedRequest, ...] = Field(
        default=(),
        description="the same demand as `requests`, sized: what a scheduler that creates instances per pod reads "
        "(the device plugin's scheduler binds by `requests`)",
    )
    priority: int = 0
    node_selector: dict[str, str] = {}
    node_affinity: list[NodeSelectorTerm] = []
    tolerations: list[Toleration] = []
    duration_s: float | None = Field(default=None, ge=0, description="run time once bound; None: forever")
    evictable: bool = Field(default=True, description="what the snapshot tells the planner")
    protection: Protection | None = Field(default=None, description="why not evictable (None: no reason given)")
    ignores_eviction: bool = Field(default=False, description="keeps running until the grace period ends")
    owned: bool = Field(default=True, description="a controller re-creates it when it is evicted")


class PodEdits:
    """The names of pods whose `spec` or `devices` were assigned since their store last looked: what the store's
    list of running pods as the snapshot shows them follows (`PodStore.running_views`). Both fields change by
    assignment, never in place (a spec is frozen). Bookkeeping only: it never makes two pods compare unequal."""

    __slots__ = ("names",)

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PodEdits)

    __hash__ = None  # type: ignore[assignment]


_SHOWN_POD_FIELDS = frozenset({"spec", "devices"})
"""What a running pod's entry in the snapshot is made from, besides its name."""


class TwinPod(_Mutable):
    name: str
    origin: str = Field(description="the name of the first pod of its controller lineage (PDBs match it too)")
    spec: PodSpec
    phase: PodPhase = PodPhase.PENDING
    arrival: int = Field(description="queue order among pods of equal priority")
    created_at: float
    node: str | None = None
    devices: list[DeviceRef] = []
    started_at: float | None = None
    finished_at: float | None = None
    terminating_since: float | None = None
    deleted_at: float | None = None
    _edits: PodEdits = PrivateAttr(default_factory=PodEdits)

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name in _SHOWN_POD_FIELDS:
            self._edits.names.add(self.name)

    def report_to(self, edits: PodEdits) -> None:
        """Tell assignments of `spec` and `devices` to `edits` (its store's) from now on."""
        self._edits = edits

    @property
    def active(self) -> bool:
        """The pod exists in the API (not deleted, not completed)."""
        return self.deleted_at is None and self.phase != PodPhase.SUCCEEDED

    @property
    def terminating(self) -> bool:
        return self.terminating_since is not None and self.deleted_at is None


class PodDisruptionBudget(_Record):
    name: str
    pods: frozenset[str] = Field(description="pod names it selects; a re-created pod matches by its origin name")
    min_available: int = Field(ge=0)


class EvictionRecord(_Record):
    time: float
    pod: str
    outcome: EvictionOutcome


class RecordedEvent(_Record):
    time: float
    kind: Literal["Pod", "Node"]
    name: str
    reason: str
    message: str


class LabelChange(_Record):
    time: float
    node: str
    key: str
    old: str | None
    new: str | None


class MigRun(_Record):
    """One mig-manager reconfiguration run and how it ended."""

    node: str
    config: str
    started_at: float
    finished_at: float
    outcome: Literal["success", "failed"]
    went_pending: bool
    message: str
    instances_created: int = Field(default=0, ge=0, description="GPU instances mig-parted created in this run")


class LogLine(_Record):
    time: float
    node: str
    message: str
