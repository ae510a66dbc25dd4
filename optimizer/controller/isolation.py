"""Per-node isolation: which nodes a new plan may not touch, and which pending pods are already spoken for.

A node mid-change is frozen out of new plans (its GPUs stay as they are, its capacity unused by the next plan)
while the rest of the cluster keeps planning. A node whose last change failed or was abandoned is quarantined
for a while that doubles with each consecutive failure, so a broken mig-manager or a stubborn budget does not
draw every new plan back to it; the pods that change was for are planned elsewhere at once.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, Field

from optimizer.controller.actuator import ActuationStatus, Phase
from solver.snapshot import ClusterSnapshot

FAILED_ENDS = frozenset({Phase.FAILED, Phase.ABANDONED})


class IsolationSettings(BaseModel):
    quarantine_base_s: float = Field(default=300.0, ge=0, description="quarantine after a first failed change")
    quarantine_max_s: float = Field(default=3600.0, ge=0, description="the longest quarantine, however many fail")


class Isolation(BaseModel):
    """What this pass's plan must leave alone."""

    frozen: frozenset[str] = frozenset()  # nodes mid-change
    quarantined: dict[str, float] = {}  # node -> until (cluster clock)
    spoken_for: frozenset[str] = frozenset()  # pending pods an active change is for

    @property
    def held(self) -> frozenset[str]:
        return self.frozen | set(self.quarantined)


def quarantined_until(status: ActuationStatus, settings: IsolationSettings) -> float | None:
    """When a node whose last change failed may be planned again; None when it is not quarantined at all."""
    if status.phase not in FAILED_ENDS or status.finished_at is None or status.failures < 1:
        return None
    wait = min(settings.quarantine_base_s * 2 ** (status.failures - 1), settings.quarantine_max_s)
    return float(status.finished_at + wait)


def isolation(statuses: Mapping[str, ActuationStatus], now: float, settings: IsolationSettings) -> Isolation:
    frozen = frozenset(node for node, s in statuses.items() if s.active)
    quarantined = {
        node: until
        for node, s in statuses.items()
        if (until := quarantined_until(s, settings)) is not None and now < until
    }
    spoken_for = frozenset(pod for s in statuses.values() if s.active for pod in s.serves)
    return Isolation(frozen=frozen, quarantined=quarantined, spoken_for=spoken_for)


def plannable(snapshot: ClusterSnapshot, held: Isolation) -> ClusterSnapshot:
    """The snapshot a new plan sees: held nodes and spoken-for pods left out."""
    left_out = held.held  # a union made anew on every read of the property: once, not once per node
    if not left_out and not held.spoken_for:
        return snapshot
    return snapshot.model_copy(
        update={
            "nodes": [n for n in snapshot.nodes if n.name not in left_out],
            "pods": [p for p in snapshot.pods if p.name not in held.spoken_for],
        }
    )
