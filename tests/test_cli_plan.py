import json
from pathlib import Path

import pytest
import yaml

from tests.cli_runner import run_cli, run_cli_process

EXAMPLE = str(Path(__file__).parent.parent / "examples" / "snapshot.yaml")


def test_plan_json_keeps_the_contract(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "plan", "--snapshot", EXAMPLE, "-o", "json")
    assert result.code == 0
    plan = json.loads(result.out)
    for field in ("status", "solve_seconds", "objective", "bound", "gap", "gpus", "placements", "unplaced"):
        assert field in plan
    assert plan["status"] == "optimal" and plan["gap"] == 0
    for gpu in plan["gpus"]:
        assert {"node", "index", "target", "reconfigure", "evict"} <= set(gpu)
    for placement in plan["placements"]:
        assert {"pod", "node", "devices"} <= set(placement)
        assert all({"gpu", "profile"} <= set(d) for d in placement["devices"])
    pods = {p["name"] for p in yaml.safe_load(Path(EXAMPLE).read_text())["pods"]}
    assert {p["pod"] for p in plan["placements"]} | {u["pod"] for u in plan["unplaced"]} == pods
    assert all(u["reason"] for u in plan["unplaced"])


def test_optimal_serves_more_than_greedy_on_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    optimal = json.loads(run_cli(capsys, "plan", "--snapshot", EXAMPLE, "-o", "json").out)
    greedy = json.loads(run_cli(capsys, "plan", "--snapshot", EXAMPLE, "--policy", "greedy", "-o", "json").out)
    assert greedy["policy"] == "greedy"
    assert optimal["objective"] > greedy["objective"]


def test_plan_table_shows_changes_evictions_and_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(capsys, "plan", "--snapshot", EXAMPLE).out
    assert "GPUs that change" in out and "team-c/notebook-1" in out
    assert "pods left pending" in out and "taints it does not tolerate" in out


def test_policy_knobs_are_obeyed(capsys: pytest.CaptureFixture[str]) -> None:
    plan = json.loads(run_cli(capsys, "plan", "--snapshot", EXAMPLE, "--max-evictions", "0", "-o", "json").out)
    assert all(not g["evict"] for g in plan["gpus"])
    plan = json.loads(run_cli(capsys, "plan", "--snapshot", EXAMPLE, "--max-reconfigurations", "0", "-o", "json").out)
    assert not any(g["reconfigure"] for g in plan["gpus"])
    assert any("reconfiguration cap (0) reached" in u["reason"] for u in plan["unplaced"])


BAD_SNAPSHOTS = [
    ("nodes: [{name: n1, gpus: [{index: 0, model: V100}]}]", "nodes[n1].gpus[0]: unknown GPU model 'V100'"),
    (
        "nodes: [{name: n1, gpus: [{index: 0, model: A100-40GB, instances: [{profile: 3g.20gb, start: 2}]}]}]",
        "nodes[n1].gpus[0].instances: infeasible layout: 3g.20gb cannot start at memory slice 2",
    ),
    (
        "nodes: [{name: n1, gpus: [{index: 0, model: A100-40GB, instances: "
        "[{profile: 4g.20gb, start: 0}, {profile: 1g.5gb, start: 3}]}]}]",
        "nodes[n1].gpus[0].instances: infeasible layout: 1g.5gb@3 overlaps",
    ),
    (
        "pods: [{name: ns/p, requests: {nvidia.com/mig-9g.1gb: 1}}]",
        "pods[ns/p].requests: no GPU model in the catalog has MIG profile '9g.1gb'",
    ),
    ("pods: [{name: ns/p, requests: {nvidia.com/mig-1g.5gb: -1}}]", "pods[ns/p].requests: negative count -1"),
    ("pods: [{name: ns/p, requests: {nvidia.com/gpu: 1}}]", "pods[ns/p].requests: no MIG request"),
    ("nodes: [{name: n1, gpus: [{index: 0}]}]", "nodes[n1].gpus[0].model: Field required"),
    ("nodes: [{name: n1, gpus: [{index: 0, model: A30}, {index: 0, model: A30}]}]", "duplicate GPU index"),
    ("nodes: [{name: n1, colour: red}]", "nodes[n1].colour: Extra inputs are not permitted"),
    (
        "nodes: [{name: n1, gpus: [{index: 0, model: A30, instances: [{profile: 4g.24gb, start: 0, colour: red}]}]}]",
        "nodes[n1].gpus[0].instances[0].colour: Extra inputs are not permitted",
    ),
    ("nodes: [\n  {name: x\n", "is not valid YAML/JSON at line 3"),
    ("[1, 2]", "expected a mapping"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SNAPSHOTS)
def test_bad_snapshots_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "snapshot.yaml"
    path.write_text(text)
    result = run_cli(capsys, "plan", "--snapshot", str(path))
    assert result.code == 2
    assert message in result.err and result.err.count("\n") == 1, result.err


def test_missing_file_and_bad_policy(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "plan", "--snapshot", "/no/such/file.yaml")
    assert result.code == 2 and "cannot read snapshot" in result.err
    result = run_cli(capsys, "plan", "--snapshot", EXAMPLE, "--policy", "random")
    assert result.code == 2 and "unknown policy 'random': known policies are greedy, optimal" in result.err
    result = run_cli(capsys, "plan", "--snapshot", EXAMPLE, "--policy", "Greedy")  # names are case-sensitive
    assert result.code == 2 and "unknown policy 'Greedy'" in result.err


def test_bad_snapshot_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps({"pods": [{"name": "a/b", "requests": {"nvidia.com/mig-1g.5gb": "many"}}]}))
    result = run_cli_process("plan", "--snapshot", str(path))
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.startswith("error: snapshot: pods[a/b].requests.nvidia.com/mig-1g.5gb")


@pytest.mark.parametrize("one_shot", [False, True])
def test_memory_is_left_to_the_exit_only_when_the_process_ends_after_the_plan(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, one_shot: bool
) -> None:
    """Under the console script the process ends once the plan is written, so the cyclic collector is left off
    and the planner's working data kept, not freed; called in-process, the command leaves both as they were."""
    import gc

    import migopt.cli
    import solver.collector

    monkeypatch.setattr(migopt.cli, "_one_shot", one_shot)
    monkeypatch.setattr(solver.collector, "_kept", None)  # restored after: other tests must free what they build
    assert gc.isenabled()
    try:
        json.loads(run_cli(capsys, "plan", "--snapshot", EXAMPLE, "-o", "json").out)
        assert gc.isenabled() is not one_shot
        assert bool(solver.collector._kept) is one_shot
    finally:
        gc.enable()
