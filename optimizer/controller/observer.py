"""What the controller tells an observer (the metrics exporter): snapshots, plans, and every event it records.

Events are the controller's own account of what it did (evictions, reconfigurations started, finished, failed),
so counting them by reason is how the exporter counts actions without reaching into the actuation code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

from optimizer.controller.actuator import ActuationStatus
from optimizer.controller.isolation import Isolation
from optimizer.controller.reasons import EventReason
from solver.plan import Plan
from solver.snapshot import ClusterSnapshot


class ControllerObserver(Protocol):
    def snapshot_taken(self, snapshot: ClusterSnapshot, now: float, statuses: Mapping[str, ActuationStatus]) -> None:
        """Every tick's observation (pending demand, current layouts) with each node's recorded change, by node."""
        ...

    def plan_made(self, plan: Plan, snapshot: ClusterSnapshot, plan_id: str, targets: Mapping[str, str]) -> None:
        """A new plan, with the snapshot it was made from and, for each node it changes, what the actuator would
        move that node to (a mig-parted config name)."""
        ...

    def isolation_changed(self, held: Isolation) -> None:
        """The nodes this pass's planning leaves alone: mid-change (frozen) and quarantined (until when)."""
        ...

    def event_recorded(self, kind: Literal["Pod", "Node"], name: str, reason: EventReason, message: str) -> None:
        """A Kubernetes Event the controller recorded (reasons `Mig*`, see `optimizer.actuators.mig_manager`)."""
        ...
