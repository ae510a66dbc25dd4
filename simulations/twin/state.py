"""What the twin's cluster holds: nodes, GPUs with their MIG instances, pods, disruption budgets, and the
records tests and reports assert on.

These are mutable pydantic models (the twin changes them as time passes); `convert.to_snapshot` turns them
into the planner's frozen `ClusterSnapshot`.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from optimizer.controller.port import EvictionOutcome
from solver.catalog import GpuModel, load_catalog
from solver.protection import Protection
from solver.snapshot import NodeSelectorTerm, Taint, Toleration

Strategy = Literal["mixed", "single"]


class _Mutable(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TwinInstance(_Mutable):
    """One MIG device (a GPU instance with one full compute instance) and the pod holding it, if any."""

    profile: str
    start: int = Field(ge=0)
    pod: str | None = None


class TwinGpu(_Mutable):
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


class TwinNode(_Mutable):
    name: str
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    taints: list[Taint] = []
    unschedulable: bool = False
    gpus: list[TwinGpu] = []
    strategy: Strategy = Field(default="mixed", description="the device plugin's MIG strategy (ClusterPolicy)")
    other_allocatable: dict[str, int] = Field(default={}, description="non-GPU resources, passed through")

    def gpu(self, index: int) -> TwinGpu:
        return next(g for g in self.gpus if g.index == index)


class DeviceRef(_Record):
    """A MIG device as the device plugin advertises it and a pod holds it."""

    gpu: int
    start: int
    profile: str


class PodPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"


class PodSpec(_Record):
    """What a pod asks for and how it behaves; a re-created pod copies it."""

    requests: dict[str, int]
    priority: int = 0
    node_selector: dict[str, str] = {}
    node_affinity: list[NodeSelectorTerm] = []
    tolerations: list[Toleration] = []
    duration_s: float | None = Field(default=None, ge=0, description="run time once bound; None: forever")
    evictable: bool = Field(default=True, description="what the snapshot tells the planner")
    protection: Protection | None = Field(default=None, description="why not evictable (None: no reason given)")
    ignores_eviction: bool = Field(default=False, description="keeps running until the grace period ends")
    owned: bool = Field(default=True, description="a controller re-creates it when it is evicted")


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


class LogLine(_Record):
    time: float
    node: str
    message: str
