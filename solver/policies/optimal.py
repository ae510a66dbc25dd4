"""The optimal policy: CP-SAT on the aggregated problem, disaggregated into a plan.

It always computes the greedy plan too and returns whichever is better on the lexicographic objective, so a time
limit can never make it worse than the baseline.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from solver.assemble import assemble
from solver.cpsat import GeometryModel
from solver.disaggregate import disaggregate
from solver.errors import MigoptError
from solver.plan import Plan, PlanPolicy, PlanStatus
from solver.policies.common import checked, no_model_built, rank
from solver.policies.greedy import baseline, empty
from solver.problem import Problem, build_problem
from solver.snapshot import ClusterSnapshot

_ROUNDS = 3


def plan(snapshot: ClusterSnapshot, policy: PlanPolicy, *, dump_model: Path | None = None) -> Plan:
    """The better of the CP-SAT plan and the greedy plan; `dump_model` receives the first solve's model as text."""
    if dump_model is not None:
        _check_writable(dump_model)
    started = time.perf_counter()
    problem = build_problem(snapshot, policy)
    greedy = baseline(problem, started)
    if not problem.demands:
        if dump_model is not None:
            raise no_model_built("no pending pod asks for MIG devices")
        return checked(snapshot, empty(greedy), policy)
    solved = _optimal(problem, policy, dump_model)
    if solved is None:
        return checked(snapshot, _unsolved(greedy, time.perf_counter() - started), policy)
    return checked(snapshot, _better(solved, greedy), policy)


def _unsolved(greedy: Plan, elapsed: float) -> Plan:
    """The greedy plan, as the optimal policy's answer when CP-SAT found no solution in time."""
    fallback = greedy.model_copy(
        update={"status": PlanStatus.GREEDY_FALLBACK, "policy": "optimal", "solve_seconds": elapsed}
    )
    fallback.notes.append("CP-SAT found no solution within the time limit; returning the greedy plan")
    return fallback


def _better(solved: Plan, greedy: Plan) -> Plan:
    """The solver's plan, unless the greedy one ranks higher (the time limit cut the search short)."""
    if rank(greedy) <= rank(solved):
        return solved
    bound = max(solved.bound, greedy.objective)
    result = greedy.model_copy(
        update={
            "status": PlanStatus.GREEDY_FALLBACK, "policy": "optimal", "solve_seconds": solved.solve_seconds,
            "bound": bound, "gap": round((bound - greedy.objective) / bound, 6) if bound else 0.0,
            "notes": solved.notes,
        }
    )  # fmt: skip
    result.notes.append("the greedy plan scored better than the solver's within the time limit")
    return result


def _optimal(problem: Problem, policy: PlanPolicy, dump_model: Path | None = None) -> Plan | None:
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
        if round_ == 0 and dump_model is not None:
            started += _dump(model, dump_model)  # writing the model is not solve time
        if previous is not None:
            model.hint(previous)
        answer = model.solve(max(left, 0.05))
        if answer is None:
            break
        bound = answer.bound if bound is None else bound
        decisions = disaggregate(problem, answer)
        elapsed = time.perf_counter() - started
        plan = assemble(
            problem, decisions, status=PlanStatus.FEASIBLE, policy_name="optimal", solve_seconds=elapsed, bound=bound
        )
        if round_ == 0 and plan.objective >= bound:  # the served objective meets its proven bound
            plan.status = PlanStatus.OPTIMAL
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


def _check_writable(path: Path) -> None:
    """Fail before planning, not after solving, when the model could not be written where asked."""
    if path.is_dir():
        raise MigoptError(f"cannot write the CP-SAT model to {path}: it is a directory")
    if not path.parent.is_dir():
        raise MigoptError(f"cannot write the CP-SAT model to {path}: directory {path.parent} does not exist")


def _dump(model: GeometryModel, path: Path) -> float:
    """Write the model as text to `path`; return the seconds that took, which the time limit does not count."""
    started = time.perf_counter()
    try:
        path.write_text(model.as_text())
    except OSError as err:
        raise MigoptError(f"cannot write the CP-SAT model to {path}: {err.strerror or err}") from None
    return time.perf_counter() - started
