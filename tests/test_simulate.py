"""`migopt simulate` end to end on small scenarios: the JSON contract, the files --out writes, bad scenarios."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from simulations.scenario import default_scenario
from tests.cli_runner import run_cli

TRACES = Path(os.environ.get("MIGOPT_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "traces"
DEFAULT_TRACE = TRACES / "alibaba-gpu-v2023" / "openb_pod_list_default.csv"

SMALL = {
    "name": "small",
    "cluster": {"nodes": 2, "gpus_per_node": 2, "models": ["A100-40GB"], "initial_config": "all-1g.5gb"},
    "workload": {
        "kind": "synthetic",
        "spec": {
            "arrival_rate_per_s": 0.02,
            "duration_mean_s": 900,
            "profile_mix": {"1g.5gb": 2, "3g.20gb": 1, "7g.40gb": 1},
            "pods": 40,
            "seed": 3,
        },
    },
    "horizon_s": 7200,
    "policies": ["static:all-1g.5gb", "greedy", "optimal"],
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_json_has_the_figures_per_policy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = run_cli(capsys, "simulate", str(write(tmp_path, SMALL)), "-o", "json", "--out", str(tmp_path / "out"))
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert set(report["policies"]) == set(SMALL["policies"])
    for figures in report["policies"].values():
        for key in ("served_pods", "pending_seconds_p50", "pending_seconds_p95", "slice_allocation"):
            assert key in figures
        assert {"reconfigurations", "evictions"} <= set(figures)
    static, optimal = report["policies"]["static:all-1g.5gb"], report["policies"]["optimal"]
    assert static["reconfigurations"] == 0 and optimal["reconfigurations"] > 0
    assert optimal["served_pods"] > static["served_pods"]  # all-1g.5gb can never run the 3g and 7g pods
    for name in ("report.json", "allocation.png", "pending.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_policies_flag_and_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = run_cli(capsys, "simulate", str(write(tmp_path, SMALL)), "--policies", "static:all-balanced")
    assert result.code == 0 and "static:all-balanced" in result.out and "served" in result.out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"policies": ["random"]}, "unknown policy 'random'"),
        ({"cluster": {"models": ["V100"]}}, "unknown GPU model 'V100'"),
        ({"horizon_s": -1}, "horizon_s: Input should be greater than 0"),
        ({"workload": {"kind": "synthetic", "spec": {"arrival_rate_per_s": 1}}}, "workload.synthetic.spec"),
    ],
)
def test_bad_scenarios_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, change: dict[str, object], message: str
) -> None:
    result = run_cli(capsys, "simulate", str(write(tmp_path, {**SMALL, **change})))
    assert result.code == 2 and message in result.err and result.err.count("\n") == 1, result.err


def test_unknown_static_config_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = run_cli(capsys, "simulate", str(write(tmp_path, {**SMALL, "policies": ["static:all-9g.1gb"]})))
    assert result.code == 2 and result.err.startswith("error: ") and result.err.count("\n") == 1


@pytest.mark.skipif(not DEFAULT_TRACE.exists(), reason=f"trace not found at {DEFAULT_TRACE}")
def test_trace_replays_in_both_modes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    small = {**SMALL, "cluster": {"nodes": 2, "gpus_per_node": 4, "models": ["A100-80GB"]}, "horizon_s": 600}
    scenario = str(write(tmp_path, small))
    for mode in ("inflate", "timed"):
        args = ("simulate", scenario, "--trace", str(DEFAULT_TRACE), "--replay", mode, "--policies", "optimal")
        result = run_cli(capsys, *args, "-o", "json")
        assert result.code == 0, result.err
        assert json.loads(result.out)["policies"]["optimal"]["arrived_pods"] > 0


def test_the_built_in_scenario_is_valid() -> None:
    scenario = default_scenario()
    assert scenario.policies == ["static:all-balanced", "greedy", "optimal"]


def test_the_example_scenario_file_is_valid() -> None:
    from simulations.scenario import load_scenario

    scenario = load_scenario(Path(__file__).resolve().parents[1] / "examples" / "scenario.yaml")
    assert scenario.cluster.models == ["A100-40GB", "A100-80GB"] and scenario.controller.max_evictions == 5


def test_the_inflate_example_names_the_shared_trace() -> None:
    from simulations.scenario import TraceSource, load_scenario

    scenario = load_scenario(Path(__file__).resolve().parents[1] / "examples" / "inflate-openb.yaml")
    assert isinstance(scenario.workload, TraceSource) and scenario.workload.replay == "inflate"
    assert scenario.cluster.nodes * scenario.cluster.gpus_per_node >= 6212  # the trace's GPU count
