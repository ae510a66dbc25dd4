"""A policy name is checked wherever one is taken (flags, scenario files, settings): an unknown one is one line
listing the known ones, exit 2, and never runs another policy under its name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from migopt.settings import load_settings
from simulations.policies import check_simulation_policy, simulation_policy_names
from solver.errors import MigoptError
from tests.cli_runner import run_cli
from tests.test_simulate import SMALL


@pytest.mark.parametrize("flag", ["nonsense", "Greedy", "greedy,nonsense", "static:"])
def test_simulate_refuses_an_unknown_policy_flag(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    result = run_cli(capsys, "simulate", "--policies", flag)
    assert result.code == 2
    assert result.err.count("\n") == 1 and "unknown policy" in result.err
    assert "known policies are static:<config>, greedy, optimal" in result.err


def test_simulate_refuses_an_empty_policy_list(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "simulate", "--policies", " , ")
    assert result.code == 2 and "--policies is empty" in result.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replay", "wrong"], "unknown --replay 'wrong'"),
        (["--replay", "inflate"], "--replay applies to a trace"),
    ],
)
def test_replay_is_checked_with_or_without_a_trace(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    result = run_cli(capsys, "simulate", *args)
    assert result.code == 2 and message in result.err


def test_a_scenario_file_with_an_unknown_policy_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "policies": ["greedy", "best"]}))
    result = run_cli(capsys, "simulate", str(path))
    assert result.code == 2
    assert "policies: unknown policy 'best': known policies are" in result.err


def test_a_known_policy_flag_runs_that_policy_only(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    result = run_cli(capsys, "simulate", str(path), "--policies", "greedy", "-o", "json")
    assert result.code == 0
    assert list(yaml.safe_load(result.out)["policies"]) == ["greedy"]


def test_settings_refuse_an_unknown_planner(tmp_path: Path) -> None:
    file = tmp_path / "settings.yaml"
    file.write_text("controller: {planner: nonsense}\n")
    with pytest.raises(MigoptError, match=r"controller\.planner: unknown policy 'nonsense': known policies are greedy"):
        load_settings(file)


def test_every_listed_name_is_accepted_and_static_needs_a_config() -> None:
    for name in simulation_policy_names():
        assert check_simulation_policy(name.replace("<config>", "all-balanced"))
    with pytest.raises(MigoptError):
        check_simulation_policy("static:")
