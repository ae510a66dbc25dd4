"""What every planning policy shares: how plans are ranked, and the check each plan passes before it is returned."""

from __future__ import annotations

from typing import Protocol

from solver.errors import MigoptError
from solver.plan import ObjectiveBreakdown, Plan, PlanPolicy
from solver.snapshot import ClusterSnapshot
from solver.timing import PlanClock
from solver.validate import SnapshotReading, plan_problems


class Scored(Protocol):
    """A plan, or a draft of one: anything with the objective's terms."""

    @property
    def objectives(self) -> ObjectiveBreakdown: ...


def rank(plan: Scored) -> tuple[int, ...]:
    """Lexicographic objective as a sortable key: higher is better."""
    o = plan.objectives
    return (o.served_weight, -o.evicted_weight, -o.reconfigured_gpus, -o.touched_nodes, -o.fragmentation)


def checked(
    snapshot: ClusterSnapshot,
    plan: Plan,
    policy: PlanPolicy,
    reading: SnapshotReading | None = None,
    found: list[str] | None = None,
) -> Plan:
    """The plan, once validated: an invalid one is a bug, reported as such rather than acted on. `reading`: what
    the checks read of the snapshot, when made already (`plan_problems`); `found`: what they found in the plan's
    body, when they ran on it ahead (the optimal policy's speculation: the same lists this plan holds)."""
    problems = plan_problems(snapshot, plan, policy, reading) if found is None else found
    if problems:
        raise MigoptError(f"internal error: the {plan.policy} plan is invalid: {problems[0]}")
    return plan


def finished(
    snapshot: ClusterSnapshot,
    plan: Plan,
    policy: PlanPolicy,
    clock: PlanClock,
    reading: SnapshotReading | None = None,
    found: list[str] | None = None,
) -> Plan:
    """The plan, validated (`checked`), with the run's timings: validation is the last phase the limit covers."""
    with clock.phase("validate"):
        checked(snapshot, plan, policy, reading, found)
    plan.timings = clock.timings()
    return plan


def no_model_built(why: str) -> MigoptError:
    """The error for a CP-SAT model asked for (to dump it) where the plan builds none."""
    return MigoptError(f"no CP-SAT model was built: {why}")
