"""The greedy policy: the baseline heuristic, fast, and never proven optimal."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from solver.assemble import Draft, draft, write_plan
from solver.collector import collector_paused, kept
from solver.greedy import greedy_decisions
from solver.plan import Plan, PlanPolicy, PlanStatus
from solver.policies.common import finished, no_model_built
from solver.problem import Problem, build_problem
from solver.snapshot import ClusterSnapshot
from solver.timing import PlanClock


@collector_paused
def plan(
    snapshot: ClusterSnapshot, policy: PlanPolicy, *, dump_model: Path | None = None, as_json: bool = False
) -> Plan:
    """The greedy plan. It builds no CP-SAT model, so asking to dump one is an error; with no solve to write
    alongside, it writes nothing ahead (`as_json` changes nothing)."""
    if dump_model is not None:
        raise no_model_built("the greedy policy does not use CP-SAT")
    clock = PlanClock(policy.time_limit_s)
    with clock.phase("aggregate"):
        problem = build_problem(snapshot, policy)
    result = baseline(problem, clock)
    kept(problem, result)  # in a one-shot process, not freed as this returns
    return finished(snapshot, written(problem, result if problem.demands else empty(result), clock), policy, clock)


def baseline(problem: Problem, clock: PlanClock) -> Draft:
    """The greedy plan of the problem, scored but not written out; its solve time counts from when planning
    began."""
    with clock.phase("greedy"):
        decisions = greedy_decisions(
            problem.snapshot, problem.policy, problem.demands, lambda node, gpu: problem.keyed_devices(node, gpu, None)
        )
        trivial_bound = sum(d.weight for d in problem.demands)
        return draft(
            problem, decisions, status=PlanStatus.GREEDY, policy_name="greedy",
            solve_seconds=clock.elapsed(), bound=trivial_bound,
        )  # fmt: skip


def empty(result: Draft) -> Draft:
    """The plan when no pending pod asks for MIG devices: nothing was decided, whichever policy was asked."""
    return replace(result, status=PlanStatus.EMPTY, policy="optimal")


def written(problem: Problem, chosen: Draft, clock: PlanClock) -> Plan:
    """The chosen draft as a whole plan."""
    with clock.phase("assemble"):
        return write_plan(problem, chosen)
