"""The policy registry (`solver.policies`) and `migopt plan --dump-model`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from solver.errors import MigoptError
from solver.plan import PlanPolicy, PlanStatus
from solver.planner import make_plan
from solver.policies import PLANNERS, check_planner_name, get_planner, planner_names
from solver.snapshot import ClusterSnapshot, parse_snapshot
from solver.validate import plan_problems
from tests.cli_runner import run_cli

EXAMPLE = Path(__file__).parent.parent / "examples" / "snapshot.yaml"
UNKNOWN = "unknown policy 'nonsense': known policies are greedy, optimal, proactive"
NO_PODS = "nodes: [{name: n1, gpus: [{index: 0, model: A100-40GB}]}]"


def _example() -> ClusterSnapshot:
    return parse_snapshot(yaml.safe_load(EXAMPLE.read_text()))


def test_names_are_listed_sorted() -> None:
    assert planner_names() == ["greedy", "optimal", "proactive"] == sorted(PLANNERS)


@pytest.mark.parametrize("check", [get_planner, check_planner_name, lambda name: make_plan(_example(), None, name)])
def test_an_unknown_name_is_one_line_listing_the_known_ones(check: Callable[[str], object]) -> None:
    with pytest.raises(MigoptError) as err:
        check("nonsense")
    assert str(err.value) == UNKNOWN


@pytest.mark.parametrize("name", ["Greedy", "OPTIMAL", " greedy", ""])
def test_names_are_exact_and_case_sensitive(name: str) -> None:
    with pytest.raises(MigoptError, match="unknown policy"):
        get_planner(name)


def test_check_returns_a_known_name() -> None:
    assert [check_planner_name(n) for n in planner_names()] == planner_names()


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_every_registered_policy_plans_the_example_validly(name: str) -> None:
    snapshot, policy = _example(), PlanPolicy()
    plan = get_planner(name)(snapshot, policy)
    assert plan_problems(snapshot, plan, policy) == []
    assert plan.policy == name and isinstance(plan.status, PlanStatus)
    assert plan.objective <= plan.bound
    same = make_plan(snapshot, policy, name)
    assert same.model_dump(exclude={"solve_seconds", "timings"}) == plan.model_dump(
        exclude={"solve_seconds", "timings"}
    )


def test_optimal_is_not_worse_than_greedy_on_the_example() -> None:
    snapshot = _example()
    optimal = get_planner("optimal")(snapshot, PlanPolicy())
    greedy = get_planner("greedy")(snapshot, PlanPolicy())
    assert optimal.status is PlanStatus.OPTIMAL and greedy.status is PlanStatus.GREEDY
    assert optimal.objective >= greedy.objective


def test_no_solution_falls_back_to_the_greedy_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("solver.policies.optimal.GeometryModel.solve", lambda self, *args: None)
    snapshot = _example()
    plan = get_planner("optimal")(snapshot, PlanPolicy())
    greedy = get_planner("greedy")(snapshot, PlanPolicy())
    assert plan.status is PlanStatus.GREEDY_FALLBACK and plan.policy == "optimal"
    assert plan.placements == greedy.placements
    assert "CP-SAT found no solution" in plan.notes[-1]


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_nothing_pending_is_an_empty_plan(name: str) -> None:
    plan = get_planner(name)(parse_snapshot(yaml.safe_load(NO_PODS)), PlanPolicy())
    assert plan.status is PlanStatus.EMPTY and plan.model_dump(mode="json")["status"] == "empty"


def test_status_serialises_as_its_plain_string(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "plan", "--snapshot", str(EXAMPLE), "-o", "json")
    assert result.code == 0 and json.loads(result.out)["status"] == "optimal"
    assert '"status": "optimal"' in result.out


def test_cli_unknown_policy_is_the_registry_error(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "plan", "--snapshot", str(EXAMPLE), "--policy", "nonsense")
    assert result.code == 2 and result.err == f"error: {UNKNOWN}\n"


# --- --dump-model -----------------------------------------------------------------------------------------------


def test_dump_model_writes_the_model_and_leaves_the_plan_alone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "model.txt"
    dumped = run_cli(capsys, "plan", "--snapshot", str(EXAMPLE), "-o", "json", "--dump-model", str(path))
    assert dumped.code == 0, dumped.err
    text = path.read_text()
    assert text and "variables {" in text and 'name: "s0"' in text and "objective {" in text
    plain = run_cli(capsys, "plan", "--snapshot", str(EXAMPLE), "-o", "json")
    ignore = {"solve_seconds", "timings"}
    assert {k: v for k, v in json.loads(dumped.out).items() if k not in ignore} == {
        k: v for k, v in json.loads(plain.out).items() if k not in ignore
    }


def _one_line_error(result_err: str, words: str) -> None:
    assert words in result_err and result_err.count("\n") == 1 and result_err.startswith("error: "), result_err


def test_dump_model_with_greedy_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "model.txt"
    result = run_cli(capsys, "plan", "--snapshot", str(EXAMPLE), "--policy", "greedy", "--dump-model", str(path))
    assert result.code == 2 and not path.exists()
    _one_line_error(result.err, "no CP-SAT model was built")


def test_dump_model_without_pending_pods_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    snapshot, path = tmp_path / "snapshot.yaml", tmp_path / "model.txt"
    snapshot.write_text(NO_PODS)
    result = run_cli(capsys, "plan", "--snapshot", str(snapshot), "--dump-model", str(path))
    assert result.code == 2 and not path.exists()
    _one_line_error(result.err, "no CP-SAT model was built")


@pytest.mark.parametrize("where", ["missing/model.txt", "."])
def test_dump_model_where_it_cannot_be_written(capsys: pytest.CaptureFixture[str], tmp_path: Path, where: str) -> None:
    path = tmp_path / where
    result = run_cli(capsys, "plan", "--snapshot", str(EXAMPLE), "--dump-model", str(path))
    assert result.code == 2
    _one_line_error(result.err, f"cannot write the CP-SAT model to {path}")
