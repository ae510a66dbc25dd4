"""The ClusterPort: the narrow interface through which the controller observes and changes a cluster.

The same controller code runs against a real cluster (the Kubernetes adapter) and against the digital twin
(`simulations`), so everything the controller may do to a cluster is listed here, and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Literal, Protocol

from optimizer.controller.reasons import EventReason
from solver.snapshot import ClusterSnapshot


class EvictionOutcome(StrEnum):
    """What the Eviction API answered."""

    EVICTED = "evicted"  # 201: the pod is being deleted
    BLOCKED = "blocked"  # 429: a PodDisruptionBudget does not allow it now; retry later
    GONE = "gone"  # 404: the pod no longer exists (409 on its UID precondition: a new pod has its name)


class ClusterPort(Protocol):
    def snapshot(self) -> ClusterSnapshot:
        """Nodes (labels, annotations, taints, cordons, allocatable, GPU layouts), running and pending MIG pods."""
        ...

    def patch_node(
        self, node: str, *, labels: Mapping[str, str | None] = {}, annotations: Mapping[str, str | None] = {}
    ) -> None:
        """Merge-patch metadata; a None value removes the key."""
        ...

    def set_unschedulable(self, node: str, unschedulable: bool) -> None:
        """Cordon or uncordon."""
        ...

    def evict(self, pod: str, uid: str | None = None) -> EvictionOutcome:
        """Ask the Eviction API to evict `namespace/name`; with `uid`, only that incarnation of the pod (a UID
        precondition: a pod re-created under the same name is never evicted by a request meant for its
        predecessor)."""
        ...

    def read_records(self) -> dict[str, str]:
        """The controller's own records of node changes (text, by node name), from an object only the controller
        may write; {} when there are none."""
        ...

    def write_record(self, node: str, text: str | None) -> None:
        """Create or replace one node's record (None deletes it); returns once the write is confirmed."""
        ...

    def read_mig_config(self) -> str | None:
        """The owned mig-parted config file (the ConfigMap key), or None when the ConfigMap does not exist."""
        ...

    def write_mig_config(self, text: str) -> None:
        """Create or replace the owned mig-parted config file."""
        ...

    def record_event(self, kind: Literal["Pod", "Node"], name: str, reason: EventReason, message: str) -> None:
        """A Kubernetes Event on a pod or node."""
        ...

    def now(self) -> float:
        """Seconds on the cluster's clock (wall time for a real cluster, simulated time for the twin)."""
        ...
