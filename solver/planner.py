"""Plan a cluster: the optimal policy (CP-SAT on the aggregated problem) or the greedy baseline.

The optimal policy always computes the greedy plan too and returns whichever is better on the lexicographic
objective, so a time limit can never make it worse than the baseline. Every plan is validated before it is
returned; an invalid one is a bug, reported as such rather than acted on.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Literal

from solver.assemble import assemble
from solver.cpsat import GeometryModel
from solver.disaggregate import disaggregate
from solver.errors import MigoptError
from solver.greedy import greedy_decisions
from solver.plan import Plan, PlanPolicy
from solver.problem import Problem, build_problem
from solver.snapshot import ClusterSnapshot
from solver.validate import plan_problems

PolicyName = Literal["optimal", "greedy"]
_ROUNDS = 3


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
    plan = _optimal(problem, policy)
    if plan is None:
        elapsed = time.perf_counter() - started
        fallback = greedy.model_copy(
            update={"status": "greedy-fallback", "policy": "optimal", "solve_seconds": elapsed}
        )
        fallback.notes.append("CP-SAT found no solution within the time limit; returning the greedy plan")
        return _checked(snapshot, fallback, policy)
    if rank(greedy) > rank(plan):
        bound = max(plan.bound, greedy.objective)
        plan = greedy.model_copy(
            update={
                "status": "greedy-fallback", "policy": "optimal", "solve_seconds": plan.solve_seconds, "bound": bound,
                "gap": round((bound - greedy.objective) / bound, 6) if bound else 0.0, "notes": plan.notes,
            }
        )  # fmt: skip
        plan.notes.append("the greedy plan scored better than the solver's within the time limit")
    return _checked(snapshot, plan, policy)


def _optimal(problem: Problem, policy: PlanPolicy) -> Plan | None:
    """Solve, disaggregate, and re-solve while several-device pods the IP served could not be co-located.

    The time limit covers these rounds. The first solve's bound is the plan's bound: later rounds only add caps,
    so theirs would not be valid.
    """
    started = time.perf_counter()
    caps: dict[int, int] = {}
    best: Plan | None = None
    bound: int | None = None
    previous = None
    for round_ in range(_ROUNDS):
        left = policy.time_limit_s - (time.perf_counter() - started)
        if round_ and left < 0.2:
            break
        model = GeometryModel(problem, caps)
        if previous is not None:
            model.hint(previous)
        answer = model.solve(max(left, 0.05), policy.workers)
        if answer is None:
            break
        bound = answer.bound if bound is None else bound
        decisions = disaggregate(problem, answer)
        elapsed = time.perf_counter() - started
        plan = assemble(
            problem, decisions, status="feasible", policy_name="optimal", solve_seconds=elapsed, bound=bound
        )
        if round_ == 0 and plan.objective >= bound:  # the served objective meets its proven bound
            plan.status = "optimal"
        plan.notes.append(f"round {round_ + 1}: cp-sat stages {', '.join(answer.stage_status)}")
        if best is None or rank(plan) > rank(best):
            best = plan.model_copy(update={"notes": (best.notes if best else []) + plan.notes})
        elif best is not None:
            best.notes.extend(plan.notes)
        achieved = _achieved(problem, decisions.placements)
        short = {di: achieved.get(di, 0) for di, served in answer.served.items() if achieved.get(di, 0) < served}
        if not short:
            break
        caps.update(short)
        previous = answer
    if best is not None:
        best.solve_seconds = round(time.perf_counter() - started, 4)
    return best


def _achieved(problem: Problem, placements: Mapping[str, object]) -> dict[int, int]:
    return {di: sum(d.pod.name in placements for d in group.demands) for di, group in enumerate(problem.pod_groups)}


def _checked(snapshot: ClusterSnapshot, plan: Plan, policy: PlanPolicy) -> Plan:
    problems = plan_problems(snapshot, plan, policy)
    if problems:
        raise MigoptError(f"internal error: the {plan.policy} plan is invalid: {problems[0]}")
    return plan
