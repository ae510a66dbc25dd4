"""The mig-manager actuator's record of one node's change: the controller's intent, kept where only it may write.

The record lives in the controller's own object (through `ClusterPort.read_records`/`write_record`: a ConfigMap in
migopt's namespace on a real cluster), never on the node: a GPU node's agent may patch its node object, so nothing
written there can be trusted as an instruction. The node's `migopt.io/*` annotations only mirror the record for
people (`kubectl get node -o yaml`); an active-looking mirror with no record behind it is reported and ignored.

Every step is saved before the action it announces, so a controller restarted at any point resumes from the
records alone.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from optimizer.controller.actuator import ACTIVE, ActuationStatus, Phase
from optimizer.controller.port import ClusterPort
from optimizer.controller.reasons import EventReason
from solver.snapshot import NodeState

log = logging.getLogger(__name__)

PREFIX = "migopt.io/"
PLAN = PREFIX + "plan-id"
PHASE = PREFIX + "phase"
TARGET = PREFIX + "target-config"
MIRRORED = (PLAN, PHASE, TARGET)
LEGACY = tuple(
    PREFIX + key
    for key in (
        "deadline", "evict", "evicted", "cordoned-by-migopt", "attempts", "expected-resources", "retry-at",
        "label-after",
    )
)  # fmt: skip
"""Annotations earlier versions used as the record itself: removed when a node's mirror is next written."""


class ChangeRecord(BaseModel):
    """One node's change, as the actuator keeps it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plan_id: str
    phase: Phase
    target: str = Field(description="the mig-parted config name the node is labelled with")
    evict: dict[str, str | None] = Field(description="pods to evict, each with the UID it had when planned")
    asked: list[str] = Field(default=[], description="pods an eviction was (about to be) requested for")
    evicted: list[str] = Field(default=[], description="pods the Eviction API accepted (or found gone)")
    expected: dict[str, int] = Field(description="MIG resources the node must advertise once applied")
    serves: list[str] = Field(default=[], description="pending pods the change is for")
    changing_gpus: list[int] = Field(default=[], description="indices of the GPUs to be rebuilt")
    deadline: float
    retry_at: float | None = None
    label_after: float | None = None
    eviction_attempts: int = 0
    failed_runs: int = Field(default=0, description="mig-manager runs that ended `failed` for this change")
    cordoned: bool = Field(default=False, description="migopt cordoned the node (and so must uncordon it)")
    labelled: bool = Field(default=False, description="this change has set the config label")
    labelled_at: float | None = Field(default=None, description="when it last set (or removed and set) the label")
    operands: dict[str, str] = Field(
        default={}, description="the node's nvidia.com/gpu.deploy.* labels when the change first set the config label"
    )
    finished_at: float | None = None
    failures: int = Field(default=0, description="consecutive changes of this node that failed or were abandoned")

    def status(self, node: str) -> ActuationStatus:
        return ActuationStatus(
            node=node,
            plan_id=self.plan_id,
            phase=self.phase,
            target=self.target,
            evict=tuple(sorted(self.evict)),
            evicted=tuple(sorted(self.evicted)),
            attempts=self.failed_runs,
            serves=tuple(self.serves),
            finished_at=self.finished_at,
            failures=self.failures,
        )


@lru_cache(maxsize=4096)
def parse_record(text: str) -> ChangeRecord | None:
    """A record as stored; None (and a log line, once per text) when it is unreadable: an unreadable record is no
    instruction. Memoised by text: every node's advance reads all records, and most do not change between passes
    (records are frozen: each change is a `model_copy`)."""
    try:
        return ChangeRecord.model_validate_json(text)
    except (ValidationError, ValueError) as err:
        log.warning("unreadable node-change record ignored: %s", str(err).splitlines()[0])
        return None


def load_records(port: ClusterPort) -> dict[str, ChangeRecord]:
    found = ((node, parse_record(text)) for node, text in port.read_records().items())
    return {node: record for node, record in found if record is not None}


def save(port: ClusterPort, node: NodeState | str, record: ChangeRecord) -> ChangeRecord:
    """Write the record (confirmed before returning), then its mirror on the node."""
    name = node if isinstance(node, str) else node.name
    port.write_record(name, record.model_dump_json())
    mirror = {PLAN: record.plan_id, PHASE: record.phase.value, TARGET: record.target}
    stale = {} if isinstance(node, str) else {k: None for k in LEGACY if k in node.annotations}
    if isinstance(node, str) or any(node.annotations.get(k) != v for k, v in mirror.items()) or stale:
        port.patch_node(name, annotations={**mirror, **stale})
    return record


_ACTIVE_VALUES = frozenset(p.value for p in ACTIVE)
"""The active phases as the mirror annotation spells them (checked on every node every pass)."""


class MirrorCheck:
    """Reports, once per claim, a node whose annotations say a change is under way that no record backs: someone
    other than the controller wrote them (or an old version did), and they are ignored."""

    def __init__(self) -> None:
        self._reported: dict[str, tuple[str, str]] = {}  # node -> the claim last reported (bounded by nodes)

    def check(self, port: ClusterPort, node: NodeState, record: ChangeRecord | None) -> None:
        phase, plan = node.annotations.get(PHASE, ""), node.annotations.get(PLAN, "")
        if phase not in _ACTIVE_VALUES:
            return
        if record is not None and record.plan_id == plan:
            return
        if self._reported.get(node.name) == (plan, phase):
            return
        self._reported[node.name] = (plan, phase)
        message = (
            f"annotations claim change {plan!r} in phase {phase!r} but migopt has no such record: ignored "
            "(node annotations are never instructions)"
        )
        log.warning("node=%s %s", node.name, message)
        port.record_event("Node", node.name, EventReason.ANNOTATIONS_IGNORED, message)
