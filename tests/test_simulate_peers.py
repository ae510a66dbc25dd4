"""The peers beside migopt in one `migopt simulate` run: the same pods reach every policy, every policy gets a row
and a JSON entry with the new figures, no peer evicts, and names and `peers:` settings fail on one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulations.engine import run_scenario
from simulations.scenario import Scenario
from simulations.twin.cluster import Twin
from tests.cli_runner import run_cli

ALL = ["static:all-balanced", "nos", "hami", "dra", "greedy", "optimal"]
BUSY: dict[str, Any] = {
    "name": "busy",
    "cluster": {"nodes": 2, "gpus_per_node": 2, "models": ["A100-80GB"], "initial_config": "all-balanced"},
    "workload": {
        "kind": "synthetic",
        "spec": {
            "arrival_rate_per_s": 0.05,
            "duration_mean_s": 600,
            "profile_mix": {"1g.10gb": 3, "2g.20gb": 2, "3g.40gb": 2, "4g.40gb": 1, "7g.80gb": 1},
            "priorities": {0: 3, 1000: 1},
            "pods": 30,
            "seed": 5,
        },
    },
    "horizon_s": 3600,
    "policies": ALL,
    "controller": {"time_limit_s": 0.5},
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_policy_gets_the_same_pods_and_no_peer_evicts(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[int, list[tuple[object, ...]]] = {}
    twins: list[Twin] = []  # held, so that no later twin can reuse a finished one's id
    original = Twin.add_pod

    def recording(self: Twin, name: str, requests: Any, **options: Any) -> Any:
        if id(self) not in seen:
            twins.append(self)
        seen.setdefault(id(self), []).append(
            (self.now(), name, tuple(sorted(requests.items())), options["at_least"], options["priority"])
        )
        return original(self, name, requests, **options)

    monkeypatch.setattr(Twin, "add_pod", recording)
    report = run_scenario(Scenario.model_validate(BUSY))
    arrivals = list(seen.values())
    assert len(arrivals) == len(ALL)
    assert all(pods == arrivals[0] for pods in arrivals) and len(arrivals[0]) == 30
    assert all(pod[3] for pod in arrivals[0])  # every pod also carries its sized request
    for name in ("nos", "hami", "dra"):
        assert report.policies[name].evictions == 0
        assert report.policies[name].served_pods > report.policies["static:all-balanced"].served_pods
    for name in ("hami", "dra"):  # an instance per device of every pod that started, no layout rebuilt
        assert report.policies[name].instance_creations == report.policies[name].served_pods
        assert report.policies[name].reconfigurations == report.policies[name].operand_restarts == 0
    nos = report.policies["nos"]
    assert nos.operand_restarts == nos.reconfigurations > 0 and nos.plans > 0
    greedy = report.policies["greedy"]
    assert greedy.operand_restarts >= greedy.reconfigurations > 0 and greedy.instance_creations > 0
    static = report.policies["static:all-balanced"]
    assert static.instance_creations == static.operand_restarts == static.reconfigurations == 0


def test_policies_flag_gives_one_json_entry_and_one_row_per_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    small = {
        **BUSY,
        "horizon_s": 900,
        "workload": {**BUSY["workload"], "spec": {**BUSY["workload"]["spec"], "pods": 8}},
    }
    path = str(write(tmp_path, small))
    result = run_cli(capsys, "simulate", path, "--policies", ",".join(ALL), "-o", "json")
    assert result.code == 0, result.err
    policies = json.loads(result.out)["policies"]
    assert list(policies) == ALL
    for figures in policies.values():
        assert {"instance_creations", "operand_restarts", "reconfigurations", "evictions"} <= set(figures)
    result = run_cli(capsys, "simulate", path, "--policies", "nos,hami,dra")
    assert result.code == 0, result.err
    rows = [line for line in result.out.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["nos", "hami", "dra"]
    assert "instance creations" in result.out and "operand restarts" in result.out


def test_an_unknown_policy_name_is_one_line_listing_the_peers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = run_cli(capsys, "simulate", str(write(tmp_path, BUSY)), "--policies", "nos,kueue")
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert "unknown policy 'kueue'" in result.err and "nos, hami, dra" in result.err


@pytest.mark.parametrize(
    ("peers", "message"),
    [
        ({"hami": {"allowlist": {"V100": ["1g.10gb"]}}}, "unknown GPU model 'V100'"),
        ({"hami": {"allowlist": {"A100-80GB": ["9g.1gb"]}}}, "unknown MIG profile '9g.1gb'"),
        ({"hami": {"allowlist": {"A100-80GB": []}}}, "name at least one profile"),
        ({"dra": {"prepare_s": -1}}, "peers.dra.prepare_s"),
        ({"nos": {"batch_window_s": 5}}, "peers.nos.batch_window_s: Extra inputs are not permitted"),
        ({"hami": {"node_policy": "random"}}, "peers.hami.node_policy"),
    ],
)
def test_bad_peer_settings_are_one_line_naming_the_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, peers: dict[str, Any], message: str
) -> None:
    result = run_cli(capsys, "simulate", str(write(tmp_path, {**BUSY, "peers": peers})))
    assert result.code == 2 and message in result.err and result.err.count("\n") == 1, result.err
