"""Work on CP-SAT's incumbents while it solves: used only for the final answer, abandoned for any other, and the
plan the same as without it."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from ortools.sat.python import cp_model

from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver import assemble
from solver.checkpoint import Abandoned, Checkpoint
from solver.cpsat import AggregateSolution, GeometryModel
from solver.decisions import Decisions
from solver.disaggregate import disaggregate
from solver.errors import MigoptError
from solver.plan import Plan, PlanPolicy
from solver.planner import make_plan
from solver.policies import common as policies_common
from solver.policies import optimal as optimal_policy
from solver.problem import Problem, build_problem
from solver.snapshot import parse_snapshot
from solver.speculation import Speculation
from solver.validate import plan_problems

_WAIT = 10.0  # seconds a test waits for the other thread before it fails


def _answer(served: int) -> AggregateSolution:
    return AggregateSolution({}, {}, {0: served}, {}, False, 0, 0, 0.0)


class _Work:
    """Work that records what it was given and, for answers in `held`, waits at its checkpoint until released
    (or abandoned)."""

    def __init__(self, held: frozenset[int] = frozenset()) -> None:
        self.held, self.release = held, threading.Event()
        self.started: list[int] = []
        self.finished: list[int] = []
        self.abandoned: list[int] = []
        self.in_progress = threading.Event()

    def __call__(self, answer: AggregateSolution, checkpoint: Checkpoint) -> str:
        served = answer.served[0]
        self.started.append(served)
        try:
            checkpoint()
            if served in self.held:
                self.in_progress.set()
                deadline = time.monotonic() + _WAIT
                while not self.release.wait(0.01) and time.monotonic() < deadline:
                    checkpoint()
            checkpoint()
        except Abandoned:
            self.abandoned.append(served)
            raise
        self.finished.append(served)
        return f"plan of {served}"


def _settled(work: _Work, count: int) -> None:
    deadline = time.monotonic() + _WAIT
    while len(work.finished) + len(work.abandoned) < count and time.monotonic() < deadline:
        time.sleep(0.01)


@contextmanager
def _speculating(first: int, held: frozenset[int] = frozenset()) -> Iterator[tuple[Speculation[str], _Work]]:
    """A speculation on a thread of its own, offered the answer `first`: once its work has begun when held."""
    work = _Work(held)
    with ThreadPoolExecutor(1) as thread:
        speculation = Speculation(thread, work)
        speculation.offer(lambda: _answer(first))
        if first in held:
            assert work.in_progress.wait(_WAIT)
        yield speculation, work


def test_the_work_done_on_the_final_answer_is_taken_as_it_is() -> None:
    with _speculating(7) as (speculation, work):
        _settled(work, 1)
        claimed = speculation.claim(_answer(7))  # another object, deciding the same
        speculation.offer(lambda: _answer(8))  # the solve has ended: nothing starts
    assert claimed == "plan of 7"
    assert work.started == [7]


def test_work_on_another_answer_is_abandoned_and_not_used() -> None:
    with _speculating(1, held=frozenset({1})) as (speculation, work):
        assert speculation.claim(_answer(2)) is None  # without waiting for the work on 1
    assert work.abandoned == [1] and work.finished == []


def test_a_newer_incumbent_abandons_the_work_in_the_making_and_is_worked_on() -> None:
    with _speculating(1, held=frozenset({1})) as (speculation, work):
        speculation.offer(lambda: _answer(2))
        speculation.offer(lambda: _answer(3))  # only the newest is taken up
        _settled(work, 2)
        claimed = speculation.claim(_answer(3))
    assert work.abandoned == [1] and work.started == [1, 3]
    assert claimed == "plan of 3"


def test_the_claim_waits_for_work_on_the_final_answer() -> None:
    with _speculating(5, held=frozenset({5})) as (speculation, work):
        threading.Timer(0.2, work.release.set).start()
        began = time.monotonic()
        claimed = speculation.claim(_answer(5))
        waited = time.monotonic() - began
    assert claimed == "plan of 5" and waited >= 0.15


def test_a_failing_work_leaves_the_work_to_the_caller() -> None:
    def failing(answer: AggregateSolution, checkpoint: Checkpoint) -> str:
        raise RuntimeError("a bug in the work")

    with ThreadPoolExecutor(1) as thread:
        speculation = Speculation(thread, failing)
        speculation.offer(lambda: _answer(1))
        time.sleep(0.1)
        assert speculation.claim(_answer(1)) is None


def test_an_abandoned_disaggregation_leaves_the_problem_as_it_was() -> None:
    """Abandoning at any checkpoint leaves nothing half-made behind: the next disaggregation is a fresh one's."""
    snapshot = parse_snapshot(generate_snapshot(ClusterSpec(nodes=30, pending_pods=200, fragmented=True, seed=4)))
    problem = build_problem(snapshot, PlanPolicy())
    answer = GeometryModel(problem).solve(10.0)
    assert answer is not None
    expected = disaggregate(build_problem(snapshot, PlanPolicy()), answer)
    calls = 0

    def count() -> None:
        nonlocal calls
        calls += 1

    disaggregate(problem, answer, count)
    assert calls > 2
    for stop_at in range(1, calls + 1):
        with pytest.raises(Abandoned):
            disaggregate(problem, answer, _stops_at(stop_at))
    again = disaggregate(problem, answer)
    assert (again.targets, again.placements) == (expected.targets, expected.placements)


def test_writing_and_checking_ahead_stop_at_their_checkpoints() -> None:
    """The body and its checks, made ahead for an incumbent the solver may have improved on since, are abandoned
    at any of their checkpoints, and left alone they give the same body and findings."""
    snapshot = parse_snapshot(generate_snapshot(ClusterSpec(nodes=30, pending_pods=200, fragmented=True, seed=4)))
    problem = build_problem(snapshot, PlanPolicy())
    answer = GeometryModel(problem).solve(10.0)
    assert answer is not None
    decisions = disaggregate(problem, answer)
    objectives = assemble.score(problem, decisions)
    body = assemble.write_body(problem, decisions, objectives)
    for work in (
        lambda checkpoint: assemble.write_body(problem, decisions, objectives, checkpoint),
        lambda checkpoint: plan_problems(snapshot, body, problem.policy, None, checkpoint),
    ):
        calls = 0

        def count() -> None:
            nonlocal calls
            calls += 1

        work(count)
        assert calls >= 2
        for stop_at in range(1, calls + 1):
            with pytest.raises(Abandoned):
                work(_stops_at(stop_at))
    assert assemble.write_body(problem, decisions, objectives) == body
    assert plan_problems(snapshot, body, problem.policy) == []


def _stops_at(call: int) -> Checkpoint:
    """A checkpoint that abandons the work at its `call`-th call."""
    seen = 0

    def checkpoint() -> None:
        nonlocal seen
        seen += 1
        if seen == call:
            raise Abandoned

    return checkpoint


def _fingerprint(plan: Plan) -> dict[str, Any]:
    return plan.model_dump(mode="json", exclude={"timings", "solve_seconds", "notes"})


def _lingering_solve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold the last stage's solve 0.3 s after it ends (a solve running on past its last solution), so that the work
    on its incumbent is done by the time the answer is claimed."""
    real_solve = cp_model.CpSolver.solve

    def solve_then_linger(self: cp_model.CpSolver, model: cp_model.CpModel, callback: Any = None) -> Any:
        status = real_solve(self, model, callback)
        if callback is not None:
            time.sleep(0.3)
        return status

    monkeypatch.setattr(cp_model.CpSolver, "solve", solve_then_linger)


def _counted(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, calls: list[str]) -> None:
    real = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


_SPECULATED = ClusterSpec(nodes=40, pending_pods=300, fragmented=True, seed=2)


def test_a_plan_made_from_speculation_is_the_plan_made_without(monkeypatch: pytest.MonkeyPatch) -> None:
    """The work on the last incumbent is done by the time the answer is claimed (`_lingering_solve`): the plan's body
    was written and checked on the second thread, the main thread neither writes nor checks it again, and the plan
    is the one made without speculation."""
    snapshot = parse_snapshot(generate_snapshot(_SPECULATED))
    policy = PlanPolicy(time_limit_s=30.0)
    claims: list[bool] = []
    real_claim = Speculation.claim

    def recorded(self: Speculation[Any], final: AggregateSolution) -> Any:
        claimed = real_claim(self, final)
        claims.append(claimed is not None)
        return claimed

    _lingering_solve(monkeypatch)
    monkeypatch.setattr(Speculation, "claim", recorded)
    ahead: list[str] = []  # the checks the speculation runs, and the body it writes
    after: list[str] = []  # the checks and the writing once the plan is chosen
    _counted(monkeypatch, optimal_policy, "plan_problems", ahead)
    _counted(monkeypatch, optimal_policy, "write_body", ahead)
    _counted(monkeypatch, policies_common, "plan_problems", after)
    _counted(monkeypatch, assemble, "write_body", after)
    speculated = make_plan(snapshot, policy)
    assert claims and all(claims)
    assert "plan_problems" in ahead and "write_body" in ahead and after == []
    used = len(claims)
    monkeypatch.setattr(Speculation, "offer", lambda self, read: None)
    plain = make_plan(snapshot, policy)
    assert len(claims) > used and not any(claims[used:])  # made without: every answer disaggregated after its solve
    assert after == ["write_body", "plan_problems"]  # written and checked once chosen
    assert _fingerprint(speculated) == _fingerprint(plain)
    assert speculated.timings is not None and speculated.timings.phases["speculate"] > 0


def test_what_the_checks_found_ahead_fails_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """A problem the checks found in the body written ahead is reported as the plan's, as if found at the end."""
    snapshot = parse_snapshot(generate_snapshot(_SPECULATED))
    _lingering_solve(monkeypatch)
    monkeypatch.setattr(optimal_policy, "plan_problems", lambda *args: ["node-x/0: a planted problem"])
    with pytest.raises(MigoptError, match="internal error: the optimal plan is invalid: node-x/0: a planted problem"):
        make_plan(snapshot, PlanPolicy(time_limit_s=30.0))


def test_a_plan_leaves_no_reference_cycle_behind() -> None:
    """What a plan builds (the problem, the work on incumbents) is freed by reference counting as it returns: a
    cycle would keep it alive until the cyclic collector's next full pass, in a controller that plans again and
    again."""
    snapshot = parse_snapshot(generate_snapshot(ClusterSpec(nodes=20, pending_pods=120, fragmented=True, seed=5)))
    was_enabled = gc.isenabled()
    gc.disable()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        make_plan(snapshot, PlanPolicy(time_limit_s=5.0))
        gc.collect()
        kept = [type(o).__name__ for o in gc.garbage if isinstance(o, Problem | Speculation | Decisions)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()
    assert kept == []
