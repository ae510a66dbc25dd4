"""Plan a cluster with a policy named in the registry (`solver.policies`): optimal (CP-SAT) or greedy.

Every plan is validated before it is returned; an invalid one is a bug, reported as such rather than acted on.
"""

from __future__ import annotations

from solver.plan import Plan, PlanPolicy
from solver.policies import get_planner
from solver.policies.common import rank
from solver.snapshot import ClusterSnapshot

__all__ = ["make_plan", "rank"]


def make_plan(snapshot: ClusterSnapshot, policy: PlanPolicy | None = None, name: str = "optimal") -> Plan:
    """Plan with the policy registered as `name`; `MigoptError` when no policy has that name."""
    return get_planner(name)(snapshot, policy or PlanPolicy())
