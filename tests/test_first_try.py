"""The first stage's first try ends at half the stage, or later, once the greedy plan it may restart from is
ready: CP-SAT searches on instead of the planner waiting for that plan idle."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver.cpsat import AggregateSolution, GeometryModel, _FirstTry
from solver.hint import greedy_answer
from solver.plan import PlanPolicy
from solver.policies.greedy import baseline
from solver.problem import build_problem
from solver.snapshot import parse_snapshot
from solver.timing import PlanClock


class _Solver:
    """Records when the search was asked to stop, counted from when it was made."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.stopped: list[float] = []

    def stop_search(self) -> None:
        self.stopped.append(time.monotonic() - self.began)


def _ready_after(seconds: float) -> Future[AggregateSolution]:
    future: Future[AggregateSolution] = Future()
    threading.Timer(seconds, future.set_result, [AggregateSolution({}, {}, {}, {}, False, 0, 0, 0.0)]).start()
    return future


def test_a_ready_greedy_plan_ends_the_first_try_at_half_the_stage() -> None:
    solver = _Solver()
    with _FirstTry(solver, 0.1, _ready_after(0.0)):  # type: ignore[arg-type]
        time.sleep(0.6)
    assert len(solver.stopped) == 1 and 0.1 <= solver.stopped[0] < 0.4


def test_the_first_try_searches_on_until_the_greedy_plan_is_ready() -> None:
    solver = _Solver()
    with _FirstTry(solver, 0.05, _ready_after(0.4)):  # type: ignore[arg-type]
        time.sleep(0.8)
    assert len(solver.stopped) == 1 and 0.4 <= solver.stopped[0] < 0.7


def test_a_search_that_ends_first_is_never_stopped() -> None:
    solver = _Solver()
    with _FirstTry(solver, 0.2, _ready_after(0.0)):  # type: ignore[arg-type]
        pass  # the solve returned before half the stage
    with _FirstTry(solver, 0.05, _ready_after(0.5)):  # type: ignore[arg-type]
        time.sleep(0.1)  # ...or after it, while the greedy plan was still in the making
    time.sleep(0.6)
    assert solver.stopped == []


def test_a_late_greedy_plan_still_gives_a_solution() -> None:
    """The real solver, told to start from a greedy plan that is ready only after half the stage: the first stage
    ends on a solution, found on or started from that plan."""
    snapshot = parse_snapshot(generate_snapshot(ClusterSpec(nodes=20, pending_pods=120, fragmented=True, seed=3)))
    problem = build_problem(snapshot, PlanPolicy())
    answer = greedy_answer(problem, baseline(problem, PlanClock(5.0)).decisions)
    late: Future[AggregateSolution] = Future()
    threading.Timer(0.3, late.set_result, [answer]).start()
    solved = GeometryModel(problem).solve(2.0, late)
    assert solved is not None and solved.served
