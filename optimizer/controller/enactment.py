"""From a plan to node changes: which nodes change, with which GPU targets, evicting whom, advertising what.

This is the last step of *decide*: the result is actuator-neutral, so the same changes could be carried out by
mig-manager's label protocol or by another actuator.
"""

from __future__ import annotations

from collections import Counter

from optimizer.controller.actuator import NodeChange
from solver.plan import GpuPlan, Plan
from solver.profiles import resource_name
from solver.snapshot import GPU_RESOURCE, ClusterSnapshot, NodeState


def node_changes(snapshot: ClusterSnapshot, plan: Plan, plan_id: str) -> list[NodeChange]:
    """One change per node with at least one GPU to reconfigure, in node-name order; every GPU of such a node
    is listed (a mig-parted entry must cover them all: spec §2.2)."""
    by_node: dict[str, list[GpuPlan]] = {}
    for gpu in plan.gpus:
        by_node.setdefault(gpu.node, []).append(gpu)
    nodes = {n.name: n for n in snapshot.nodes}
    serving: dict[str, list[str]] = {}  # grouped once: a scan of every placement per changed node is quadratic
    for placement in plan.placements:
        serving.setdefault(placement.node, []).append(placement.pod)
    changes = []
    for name, gpus in sorted(by_node.items()):
        if not any(g.reconfigure for g in gpus):
            continue
        changes.append(
            NodeChange(
                node=name,
                plan_id=plan_id,
                gpus=sorted(gpus, key=lambda g: g.index),
                evict=sorted({pod for g in gpus for pod in g.evict}),
                expected=_expected(nodes[name], gpus),
                serves=sorted(serving.get(name, [])),
            )
        )
    return changes


def _expected(node: NodeState, gpus: list[GpuPlan]) -> dict[str, int]:
    """The MIG resources the node must advertise once every GPU has its target map."""
    counts: Counter[str] = Counter()
    for gpu in gpus:
        for profile, count in gpu.target.items():
            counts[resource_name(profile) if node.strategy == "mixed" else GPU_RESOURCE] += count
    return dict(counts)
