"""Placements on capacity that already exists must bind: if they do not, that capacity was never real.

A plan that serves a pod from a free instance changes nothing on the node, so the scheduler binds the pod within
seconds. When the instance still looks free well after that and the pod still waits, what describes the node (a
lying or stale agent report, a wrong dcgm mapping) is not to be believed: the node is held out of planning as
suspect for a while, which also re-plans its pods elsewhere at once.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field

from optimizer.controller.port import ClusterPort
from optimizer.controller.reasons import EventReason
from solver.plan import Plan
from solver.profiles import resource_name
from solver.snapshot import GPU_RESOURCE, ClusterSnapshot, NodeState, PendingPod

log = logging.getLogger(__name__)


class PromiseSettings(BaseModel):
    bind_timeout_s: float = Field(default=120.0, gt=0, description="a pod placed on free capacity binds by then")
    suspect_s: float = Field(default=600.0, ge=0, description="how long a node whose free capacity lied is held out")


class PromiseWatch:
    """The placements on unchanged nodes still waiting to bind, and the nodes found to promise what they lack."""

    def __init__(self, settings: PromiseSettings) -> None:
        self.settings = settings
        self._promised: dict[str, tuple[str, float]] = {}  # pod -> (node, planned at)
        self._suspect: dict[str, float] = {}  # node -> until

    def planned(self, plan: Plan, changed: set[str], now: float) -> None:
        for placement in plan.placements:
            if placement.node not in changed:
                self._promised.setdefault(placement.pod, (placement.node, now))

    def check(self, port: ClusterPort, snapshot: ClusterSnapshot, now: float) -> dict[str, float]:
        """Nodes held out now (node -> until); a node newly found suspect is reported once."""
        pending = {p.name: p for p in snapshot.pods}
        nodes = {n.name: n for n in snapshot.nodes}
        for pod in [p for p in self._promised if p not in pending]:
            del self._promised[pod]  # bound (or gone): the promise was kept
        for pod, (node, since) in list(self._promised.items()):
            if now - since < self.settings.bind_timeout_s:
                continue
            del self._promised[pod]
            state = nodes.get(node)
            if state is None or not _offers(state, pending[pod]):
                continue  # the capacity went to someone else: nothing to hold against the node
            if node not in self._suspect or self._suspect[node] <= now:
                message = (
                    f"{pod} was planned on free capacity here {now - since:.0f}s ago and has not bound although it "
                    f"still looks free: this node's layout source is not believed for {self.settings.suspect_s:.0f}s"
                )
                log.warning("node=%s suspect: %s", node, message)
                port.record_event("Node", node, EventReason.NODE_SUSPECT, message)
            self._suspect[node] = now + self.settings.suspect_s
        self._suspect = {node: until for node, until in self._suspect.items() if until > now}
        return dict(self._suspect)


def _offers(node: NodeState, pod: PendingPod) -> bool:
    """The node still shows a free instance of a kind the pod asks for."""
    for gpu in node.gpus:
        for instance in gpu.instances:
            if instance.pod is None and (
                resource_name(instance.profile) in pod.requests or GPU_RESOURCE in pod.requests
            ):
                return True
    return False
