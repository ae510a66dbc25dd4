"""The adapter's snapshot, kept in pieces (one per pod, one per node) so a reconcile pass rebuilds only what changed.

A thousand nodes and thousands of pods, each turned into planner models and each node's layout resolved and
verified, cost a tenth of a second or more per pass even when nothing happened. A piece remembers what it was built
from and is reused while that is still so:

- a pod piece: the informer's object itself (informers replace an object on every event and never edit one, so
  the same object means the same pod; after a relist, an equal object does); a new pending pod whose scheduling
  spec equals one already validated (the replicas of a Job) is that pod renamed (`scheduling_key`);
- a node piece: the node object, the parsed owned config, the devices the pods bound to it hold, dcgm's holders on
  it, its change record, what NVIDIA's DRA driver manages and holds on it, and, for a node with an agent report,
  whether that report is fresh, stale or from the future at this moment (the one input that changes with the clock
  alone; see `report_verdict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nvidia_protocol.agent_report import GPU_REPORT_ANNOTATION
from nvidia_protocol.migparted import MigPartedConfig
from optimizer.kube.dra import NodeDra
from optimizer.kube.layouts import DeviceHolder, HeldDevices, report_from_annotation
from solver.errors import MigoptError
from solver.snapshot import NodeState, PendingPod, RunningPod


@dataclass(frozen=True)
class PodPiece:
    """What one pod object contributes: devices it holds on a node, or its pending request, or why it is skipped."""

    raw: Mapping[str, Any]
    node: str | None = None  # bound: the node it holds devices on
    held: HeldDevices | None = None
    pending: PendingPod | None = None
    skipped: str | None = None  # pending but malformed: the one-line reason
    running: dict[str | None, RunningPod] = field(default_factory=dict)  # blocking budget -> eviction view


@dataclass(frozen=True)
class NodeInputs:
    """Everything a node piece is built from, besides the clock."""

    raw: Mapping[str, Any]
    config: MigPartedConfig | None
    held: tuple[HeldDevices, ...]
    holders: tuple[DeviceHolder, ...] | None  # None: no dcgm source at all
    record: str | None
    dra: NodeDra | None = None  # None: no DRA driver's slice or claim places anything on it

    def same_as(self, other: NodeInputs) -> bool:
        """The node object by identity (the informer replaces what changes) or else by value (a relist brings
        equal copies), the parsed config by identity (parsed once per text), the rest by value."""
        return (
            (self.raw is other.raw or self.raw == other.raw)
            and self.config is other.config
            and self.held == other.held
            and self.holders == other.holders
            and self.record == other.record
            and self.dra == other.dra
        )


@dataclass(frozen=True)
class NodePiece:
    inputs: NodeInputs
    node: NodeState | None  # None: left out of the snapshot for now (a drain waits on it)
    source: str
    extra: dict[str, RunningPod]  # stand-ins and guessed pods its layout adds to the running pods
    observed_at: float | None  # the agent report's time, when it has one
    verdict: str  # `report_verdict` when built


def scheduling_key(pod: Mapping[str, Any]) -> str:
    """Everything of a pod `objects.pending_pod` reads but its name, as text: pods with equal keys (the replicas
    of a Job or Deployment) become equal `PendingPod`s but for the name, so one validated template serves all."""
    spec = pod.get("spec") or {}
    resources = [c.get("resources") for c in spec.get("containers") or []]
    init_resources = [c.get("resources") for c in spec.get("initContainers") or []]
    parts = [spec.get("priority"), spec.get("nodeSelector"), spec.get("affinity"), spec.get("tolerations")]
    return repr([*parts, resources, init_resources])  # JSON values: repr tells any two apart (keys in API order)


def report_observed_at(raw: Mapping[str, Any], node: str) -> float | None:
    """When the node's agent report was observed (Unix seconds); None without a report that says."""
    text = ((raw.get("metadata") or {}).get("annotations") or {}).get(GPU_REPORT_ANNOTATION)
    if not text:
        return None
    try:
        report = report_from_annotation(str(text), node)
    except MigoptError:
        return None
    return None if report.observed_at is None else report.observed_at.timestamp()


def report_verdict(observed_at: float | None, now: float, max_age_s: float, max_skew_s: float) -> str:
    """`layouts.check_fresh`'s answer at `now`, with its arithmetic: "stale", "future", "fresh" ("" undated)."""
    if observed_at is None:
        return ""
    age = now - observed_at
    if age > max_age_s:
        return "stale"
    if -age > max_skew_s:
        return "future"
    return "fresh"
