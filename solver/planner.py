"""Plan a cluster: the optimal policy (CP-SAT on the aggregated problem) or the greedy baseline.

The optimal policy always computes the greedy plan too and returns whichever is better on the lexicographic
objective, so a time limit can never make it worse than the baseline. Every plan is validated before it is
returned; an invalid one is a bug, reported as such rather than acted on.
"""

from __future__ import annotations

import time
from typing import Literal

from solver.assemble import assemble
from solver.cpsat import GeometryModel
from solver.disaggregate import disaggregate
from solver.errors import MigoptError
from solver.greedy import greedy_decisions
from solver.plan import Plan, PlanPolicy
from solver.problem import build_problem
from solver.snapshot import ClusterSnapshot
from solver.validate import plan_problems

PolicyName = Literal["optimal", "greedy"]


def rank(plan: Plan) -> tuple[int, ...]:
    """Lexicographic objective as a sortable key: higher is better."""
    o = plan.objectives
    return (o.served_weight, -o.evicted_weight, -o.reconfigured_gpus, -o.touched_nodes, -o.fragmentation)


def make_plan(snapshot: ClusterSnapshot, policy: PlanPolicy | None = None, name: PolicyName = "optimal") -> Plan:
    policy = policy or PlanPolicy()
    started = time.perf_counter()
    problem = build_problem(snapshot, policy)
    trivial_bound = sum(d.weight for d in problem.demands)
    greedy = assemble(
        problem, greedy_decisions(snapshot, policy), status="greedy", policy_name="greedy",
        solve_seconds=time.perf_counter() - started, bound=trivial_bound,
    )  # fmt: skip
    if name == "greedy" or not problem.demands:
        chosen = greedy if problem.demands else greedy.model_copy(update={"status": "empty", "policy": "optimal"})
        return _checked(snapshot, chosen, policy)
    model = GeometryModel(problem)
    answer = model.solve(max(policy.time_limit_s - (time.perf_counter() - started), 0.05), policy.workers)
    elapsed = time.perf_counter() - started
    if answer is None:
        note = "CP-SAT found no solution within the time limit; returning the greedy plan"
        fallback = greedy.model_copy(
            update={"status": "greedy-fallback", "policy": "optimal", "solve_seconds": elapsed}
        )
        fallback.notes.append(note)
        return _checked(snapshot, fallback, policy)
    decisions = disaggregate(problem, answer)
    plan = assemble(
        problem, decisions, status="feasible", policy_name="optimal", solve_seconds=elapsed, bound=answer.bound
    )
    if answer.proven_optimal and plan.objective >= answer.bound:
        plan.status = "optimal"
    plan.notes.append(f"cp-sat stages: {', '.join(answer.stage_status)}")
    if rank(greedy) > rank(plan):
        plan = greedy.model_copy(
            update={"status": "greedy-fallback", "policy": "optimal", "solve_seconds": elapsed, "bound": plan.bound}
        )
        plan.gap = round((plan.bound - plan.objective) / plan.bound, 6) if plan.bound else 0.0
        plan.notes.append("the greedy plan scored better than the solver's within the time limit")
    return _checked(snapshot, plan, policy)


def _checked(snapshot: ClusterSnapshot, plan: Plan, policy: PlanPolicy) -> Plan:
    problems = plan_problems(snapshot, plan, policy)
    if problems:
        raise MigoptError(f"internal error: the {plan.policy} plan is invalid: {problems[0]}")
    return plan
