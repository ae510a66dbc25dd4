"""What the controller tells an observer (the metrics exporter): snapshots, plans, and every event it records.

Events are the controller's own account of what it did (evictions, reconfigurations started, finished, failed),
so counting them by reason is how the exporter counts actions without reaching into the actuation code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

from optimizer.controller.actuator import ActuationStatus
from optimizer.controller.port import ClusterPort, EvictionOutcome
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

    def event_recorded(self, kind: Literal["Pod", "Node"], name: str, reason: EventReason, message: str) -> None:
        """A Kubernetes Event the controller recorded (reasons `Mig*`, see `optimizer.actuators.mig_manager`)."""
        ...


class ObservedPort:
    """A ClusterPort that forwards everything and tells the observer about each recorded event."""

    def __init__(self, port: ClusterPort, observer: ControllerObserver) -> None:
        self._port = port
        self._observer = observer

    def snapshot(self) -> ClusterSnapshot:
        return self._port.snapshot()

    def patch_node(
        self, node: str, *, labels: Mapping[str, str | None] = {}, annotations: Mapping[str, str | None] = {}
    ) -> None:
        self._port.patch_node(node, labels=labels, annotations=annotations)

    def set_unschedulable(self, node: str, unschedulable: bool) -> None:
        self._port.set_unschedulable(node, unschedulable)

    def evict(self, pod: str) -> EvictionOutcome:
        return self._port.evict(pod)

    def read_mig_config(self) -> str | None:
        return self._port.read_mig_config()

    def write_mig_config(self, text: str) -> None:
        self._port.write_mig_config(text)

    def record_event(self, kind: Literal["Pod", "Node"], name: str, reason: EventReason, message: str) -> None:
        self._port.record_event(kind, name, reason, message)
        self._observer.event_recorded(kind, name, reason, message)

    def now(self) -> float:
        return self._port.now()


def _conforms(port: ObservedPort) -> ClusterPort:
    """Static check (mypy) that the wrapper is a ClusterPort."""
    return port
