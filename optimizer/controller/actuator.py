"""The Actuator seam: how a planned node change is carried out, whatever the mechanism.

The reconcile loop decides *what* each node must become (a `NodeChange`); an actuator makes it so and reports
where each node stands as an `ActuationStatus` value. The loop and the metrics read those values, never the
actuator's own records (the mig-manager label protocol keeps them in node annotations; another backend, such as
NVIDIA's DRA driver, would keep them elsewhere). An actuator is stateless between calls: everything it needs to
resume after a restart is in what it recorded on the cluster, so each call takes the port it acts through.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from optimizer.controller.port import ClusterPort
from solver.plan import GpuPlan
from solver.snapshot import ClusterSnapshot, NodeState


class Phase(StrEnum):
    """Where a node's change stands: five active phases, then one of three ends."""

    CORDONING = "cordoning"
    EVICTING = "evicting"
    LABELLING = "labelling"
    APPLYING = "applying"
    VERIFYING = "verifying"
    DONE = "done"
    ABANDONED = "abandoned"
    FAILED = "failed"


ACTIVE = frozenset({Phase.CORDONING, Phase.EVICTING, Phase.LABELLING, Phase.APPLYING, Phase.VERIFYING})


class ActuationSettings(BaseModel):
    eviction_timeout_s: float = Field(default=600.0, gt=0, description="give up on a node's drain after this")
    eviction_backoff_s: float = Field(default=10.0, gt=0, description="first wait after a 429, doubled each time")
    apply_timeout_s: float = Field(default=900.0, gt=0, description="a mig-manager run stuck longer than this fails")
    max_retries: int = Field(default=2, ge=0, description="relabel retries after mig-manager reports failed")
    config_propagation_s: float = Field(
        default=90.0,
        ge=0,
        description="wait this long after writing a new config entry before a label names it: mig-manager reads "
        "the ConfigMap through a volume that kubelet refreshes only every sync period plus cache TTL (spec §1.7)",
    )
    pending_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="a `pending` state older than this is a mig-manager run that ended without writing a state: "
        "v0.13-v0.15 give up after waiting 5 minutes for an operand's pods and leave `pending` and the operands "
        "paused (spec §7.1); keep it below apply_timeout_s so the change can re-trigger the run",
    )
    repair_paused_operands: bool = Field(
        default=True,
        description="on nodes whose change migopt started: restore the nvidia.com/gpu.deploy.* labels a finished "
        "mig-manager run left paused, and re-trigger (remove and set the config label) a run that timed out; "
        "off: such nodes are only reported",
    )


class NodeChange(BaseModel):
    """One node's part of a plan, in the planner's terms: the GPUs with their targets, who to evict, and the
    resources the node must advertise once done."""

    node: str
    plan_id: str
    gpus: list[GpuPlan]
    evict: list[str]
    expected: dict[str, int]  # MIG resource -> allocatable count once applied
    serves: list[str] = []  # the pending pods the plan places on this node


class ActuationStatus(BaseModel):
    """A node's change as its actuator last recorded it."""

    model_config = ConfigDict(frozen=True)

    node: str
    plan_id: str
    phase: Phase
    target: str = Field(description="what the node is moving to, in the actuator's terms (a mig-parted config name)")
    evict: tuple[str, ...] = ()
    evicted: tuple[str, ...] = ()
    attempts: int = 0
    serves: tuple[str, ...] = Field(default=(), description="the pending pods the change is for")
    finished_at: float | None = Field(default=None, description="when it ended (cluster clock)")
    failures: int = Field(default=0, description="consecutive changes of this node that failed or were abandoned")

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE


class Actuator(Protocol):
    def statuses(self, port: ClusterPort, snapshot: ClusterSnapshot) -> dict[str, ActuationStatus]:
        """Every node's change as recorded, by node; a node with none (or an unreadable one) is absent."""
        ...

    def target(self, snapshot: ClusterSnapshot, change: NodeChange) -> str:
        """What the node would move to, in the actuator's terms (a mig-parted config name): for reports."""
        ...

    def start(
        self, port: ClusterPort, snapshot: ClusterSnapshot, changes: Sequence[NodeChange], may_act: Callable[[], bool]
    ) -> None:
        """Begin these changes (one plan's); `may_act` is asked before each node's start. `snapshot` is the whole
        cluster as read, nodes held out of planning included: what they use must be kept."""
        ...

    def advance(self, port: ClusterPort, snapshot: ClusterSnapshot, node: NodeState) -> Phase | None:
        """Take an active node's change one step further, as far as it can go now; returns its phase afterwards."""
        ...

    def tend(self, port: ClusterPort, snapshot: ClusterSnapshot, may_repair: bool) -> None:
        """Look at every node for what the mechanism may have left broken (mig-manager: operands left paused, a
        run that ended without a state), report it, and, when `may_repair` (enforce mode), repair it where the
        change was the actuator's own. Called every pass, before the active changes advance."""
        ...
