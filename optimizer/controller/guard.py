"""The port as the controller uses it: leadership checked before every write, and every event told to the observer.

A replica that lost its lease (a long GC pause, a SIGSTOP, a partition) stops between two requests, not at the end
of a pass; the metrics exporter counts the controller's actions from the events it records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

from optimizer.controller.observer import ControllerObserver
from optimizer.controller.port import ClusterPort, EvictionOutcome
from optimizer.controller.reasons import EventReason
from solver.errors import MigoptError
from solver.snapshot import ClusterSnapshot


class LeadershipLost(MigoptError):
    """Raised instead of a write when this replica may no longer act."""


class GuardedPort:
    """A ClusterPort whose every write first asks `may_act`; reads pass through; events also go to the observer."""

    def __init__(
        self, port: ClusterPort, may_act: Callable[[], bool], observer: ControllerObserver | None = None
    ) -> None:
        self._port = port
        self._may_act = may_act
        self._observer = observer

    def _check(self, what: str) -> None:
        if not self._may_act():
            raise LeadershipLost(f"not the leader any more: {what} not sent")

    def snapshot(self) -> ClusterSnapshot:
        return self._port.snapshot()

    def patch_node(
        self, node: str, *, labels: Mapping[str, str | None] = {}, annotations: Mapping[str, str | None] = {}
    ) -> None:
        self._check(f"patch of node {node}")
        self._port.patch_node(node, labels=labels, annotations=annotations)

    def set_unschedulable(self, node: str, unschedulable: bool) -> None:
        self._check(f"{'cordon' if unschedulable else 'uncordon'} of node {node}")
        self._port.set_unschedulable(node, unschedulable)

    def evict(self, pod: str, uid: str | None = None) -> EvictionOutcome:
        self._check(f"eviction of {pod}")
        return self._port.evict(pod, uid)

    def read_mig_config(self) -> str | None:
        return self._port.read_mig_config()

    def write_mig_config(self, text: str) -> None:
        self._check("write of the mig-parted ConfigMap")
        self._port.write_mig_config(text)

    def read_records(self) -> dict[str, str]:
        return self._port.read_records()

    def write_record(self, node: str, text: str | None) -> None:
        self._check(f"write of node {node}'s change record")
        self._port.write_record(node, text)

    def record_event(self, kind: Literal["Pod", "Node"], name: str, reason: EventReason, message: str) -> None:
        self._check(f"event {reason} on {name}")
        self._port.record_event(kind, name, reason, message)
        if self._observer is not None:
            self._observer.event_recorded(kind, name, reason, message)

    def now(self) -> float:
        return self._port.now()


def _conforms(port: GuardedPort) -> ClusterPort:
    """Static check (mypy) that the wrapper is a ClusterPort."""
    return port
