"""Where a plan's time goes, the time limit covering the whole run, and the collector pause around planning."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from ortools.sat.python import cp_model

from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver.collector import collector_paused
from solver.plan import PlanPolicy
from solver.planner import make_plan
from solver.snapshot import ClusterSnapshot, parse_snapshot
from solver.timing import PlanClock
from tests.cli_runner import run_cli

EXAMPLE = Path(__file__).parent.parent / "examples" / "snapshot.yaml"


def test_plan_json_reports_cpsat_time_and_the_whole_run(capsys: pytest.CaptureFixture[str]) -> None:
    optimal = json.loads(run_cli(capsys, "plan", "--snapshot", str(EXAMPLE), "-o", "json").out)
    timings = optimal["timings"]
    assert 0 < timings["cpsat_seconds"] <= timings["total_seconds"]
    assert {"aggregate", "greedy", "model", "cpsat", "disaggregate", "assemble", "validate"} <= set(timings["phases"])
    alongside = {"greedy", "prepare", "speculate"}  # the second thread's, beside CP-SAT
    main_thread = [seconds for phase, seconds in timings["phases"].items() if phase not in alongside]
    assert sum(main_thread) <= timings["total_seconds"] + 0.01  # the main thread's phases do not overlap
    assert "solve_seconds" in optimal  # kept for scripts that read it
    greedy = json.loads(run_cli(capsys, "plan", "--snapshot", str(EXAMPLE), "--policy", "greedy", "-o", "json").out)
    assert greedy["timings"]["cpsat_seconds"] == 0 and "cpsat" not in greedy["timings"]["phases"]


def _snapshot() -> ClusterSnapshot:
    return parse_snapshot(yaml.safe_load(EXAMPLE.read_text()))


@pytest.mark.parametrize(("reserve", "most"), [(1.5, 0.5), (5.0, 0.05)])
def test_cpsat_gets_what_is_left_of_the_limit(monkeypatch: pytest.MonkeyPatch, reserve: float, most: float) -> None:
    """The limit covers the whole run: CP-SAT's share is the limit less what was spent and what is kept back for
    the work after it; when nothing is left it still gets a token 0.05 s, and the greedy plan backs it up."""
    given: list[float] = []

    def solve(self: Any, time_limit_s: float | None = None, fallback: Any = None, incumbents: Any = None) -> None:
        given.append(time_limit_s if time_limit_s is not None else -1.0)

    monkeypatch.setattr("solver.policies.optimal.GeometryModel.solve", solve)
    monkeypatch.setattr("solver.policies.optimal._reserve", lambda clock: reserve)
    plan = make_plan(_snapshot(), PlanPolicy(time_limit_s=2.0))
    assert len(given) == 1 and 0 < given[0] <= most
    assert plan.status == "greedy-fallback"


def test_the_clock_adds_phases_and_leaves_out_excluded_time() -> None:
    clock = PlanClock(limit_s=10.0)
    with clock.phase("a"):
        pass
    clock.add("a", 1.0)
    clock.add("b", 2.0)
    assert list(clock.phases) == ["a", "b"] and clock.phases["a"] >= 1.0
    before = clock.left()
    clock.exclude(3.0)
    assert clock.left() > before + 2.9
    timings = clock.timings()
    assert timings.cpsat_seconds == 0 and timings.phases["b"] == 2.0


def test_the_collector_is_paused_while_planning_and_restored_after() -> None:
    seen: list[bool] = []

    @collector_paused
    def inner() -> None:
        seen.append(gc.isenabled())

    @collector_paused
    def outer(fail: bool) -> None:
        inner()
        seen.append(gc.isenabled())
        if fail:
            raise RuntimeError("boom")

    assert gc.isenabled()
    outer(False)
    assert seen == [False, False] and gc.isenabled()
    with pytest.raises(RuntimeError):
        outer(True)
    assert gc.isenabled()
    gc.disable()
    try:
        outer(False)
        assert not gc.isenabled()  # it was off before: planning does not switch it on
    finally:
        gc.enable()


def test_cpsat_restarts_from_the_greedy_plan_when_its_first_try_ends_worse(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first stage cut short on a solution worse than the greedy plan's (here: the plan of no change, hinted,
    and the search stopped there) spends the rest of its time starting from the greedy plan, so CP-SAT's answer
    is never worse than it."""
    real = cp_model.CpSolver

    class StopsOnNothing(real):  # type: ignore[misc, valid-type]
        calls = 0

        def solve(self, model: cp_model.CpModel, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.parameters.stop_after_first_solution = self.calls == 1
            if self.calls == 1:
                model.clear_hints()  # type: ignore[no-untyped-call]
                for index in range(len(model.proto.variables)):
                    model.add_hint(model.get_int_var_from_proto_index(index), 0)
            return super().solve(model, *args, **kwargs)

    monkeypatch.setattr(cp_model, "CpSolver", StopsOnNothing)
    snapshot = parse_snapshot(generate_snapshot(ClusterSpec(nodes=20, pending_pods=100, seed=1)))
    plan = make_plan(snapshot, PlanPolicy(time_limit_s=10.0))
    greedy = make_plan(snapshot, PlanPolicy(), "greedy")
    assert any("FEASIBLE, from greedy OPTIMAL" in note for note in plan.notes), plan.notes
    assert plan.objective >= greedy.objective and plan.gap == 0.0


def test_cpsat_restarts_from_the_greedy_plan_when_its_first_try_finds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first stage that finds no solution in half its time tries again from the greedy plan, a complete
    solution, so the optimal policy still answers with CP-SAT's plan, never below the greedy one."""
    real = cp_model.CpSolver

    class FailsFirst(real):  # type: ignore[misc, valid-type]
        """A solver whose first `solve` reports UNKNOWN, as a search cut short by its time limit does."""

        calls = 0

        def solve(self, model: cp_model.CpModel, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return cp_model.UNKNOWN if self.calls == 1 else super().solve(model, *args, **kwargs)

    monkeypatch.setattr(cp_model, "CpSolver", FailsFirst)
    snapshot = _snapshot()
    plan = make_plan(snapshot, PlanPolicy(time_limit_s=10.0))
    greedy = make_plan(snapshot, PlanPolicy(), "greedy")
    assert any("UNKNOWN, from greedy" in note for note in plan.notes), plan.notes
    assert plan.status in ("optimal", "feasible") and plan.objective >= greedy.objective
