"""The greedy policy: the baseline heuristic, fast, and never proven optimal."""

from __future__ import annotations

import time
from pathlib import Path

from solver.assemble import assemble
from solver.greedy import greedy_decisions
from solver.plan import Plan, PlanPolicy, PlanStatus
from solver.policies.common import checked, no_model_built
from solver.problem import Problem, build_problem
from solver.snapshot import ClusterSnapshot


def plan(snapshot: ClusterSnapshot, policy: PlanPolicy, *, dump_model: Path | None = None) -> Plan:
    """The greedy plan. It builds no CP-SAT model, so asking to dump one is an error."""
    if dump_model is not None:
        raise no_model_built("the greedy policy does not use CP-SAT")
    started = time.perf_counter()
    problem = build_problem(snapshot, policy)
    result = baseline(problem, started)
    return checked(snapshot, result if problem.demands else empty(result), policy)


def baseline(problem: Problem, started: float) -> Plan:
    """The greedy plan of the problem, unchecked; its solve time counts from `started`, when planning began."""
    decisions = greedy_decisions(problem.snapshot, problem.policy)
    trivial_bound = sum(d.weight for d in problem.demands)
    return assemble(
        problem, decisions, status=PlanStatus.GREEDY, policy_name="greedy",
        solve_seconds=time.perf_counter() - started, bound=trivial_bound,
    )  # fmt: skip


def empty(plan: Plan) -> Plan:
    """The plan when no pending pod asks for MIG devices: nothing was decided, whichever policy was asked."""
    return plan.model_copy(update={"status": PlanStatus.EMPTY, "policy": "optimal"})
