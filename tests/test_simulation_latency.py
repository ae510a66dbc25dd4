"""Simulations as slow as a real cluster by default: mig-manager sees ConfigMap writes after kubelet's volume
refresh, the controller waits for it, and `migopt twin serve` tells a controller the wait that matches it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from migopt.settings import load_settings
from migopt.twin_cli import matching_config_propagation_s, write_controller_settings
from simulations.engine import run_policy, workload_pods
from simulations.scenario import Scenario
from simulations.twin.cluster import Twin
from simulations.twin.state import MigRun

ONE_POD: dict[str, Any] = {
    "name": "one pod that needs a new geometry",
    "cluster": {"nodes": 1, "gpus_per_node": 2, "models": ["A100-40GB"], "initial_config": "all-1g.5gb"},
    "workload": {
        "kind": "synthetic",
        "spec": {"arrival_rate_per_s": 0.01, "duration_mean_s": 600, "profile_mix": {"3g.20gb": 1}, "pods": 1},
    },
    "horizon_s": 1800,
    "policies": ["optimal"],
}
INSTANT = {"twin": {"config_refresh_s": 0}, "controller": {"config_propagation_s": 0}}


def simulate(monkeypatch: pytest.MonkeyPatch, **extra: Any) -> tuple[float, list[MigRun]]:
    """The pod's pending time and the twin's mig-manager runs."""
    twins: list[Twin] = []
    from_snapshot = Twin.from_snapshot

    def keep(*args: Any, **kwargs: Any) -> Twin:
        twins.append(from_snapshot(*args, **kwargs))
        return twins[-1]

    monkeypatch.setattr(Twin, "from_snapshot", keep)
    scenario = Scenario.model_validate({**ONE_POD, **extra})
    result = run_policy(scenario, "optimal", workload_pods(scenario))
    assert result.served_pods == 1
    return result.pending_seconds_p50, twins[0].mig_runs


def test_scenarios_default_to_a_real_clusters_refresh_and_the_controllers_wait() -> None:
    scenario = Scenario.model_validate(ONE_POD)
    assert scenario.twin.config_refresh_s == 60
    assert scenario.controller.config_propagation_s is None  # the controller's own default, as on a cluster


def test_the_default_simulation_waits_for_the_refresh_and_its_run_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    realistic_wait, realistic_runs = simulate(monkeypatch)
    instant_wait, instant_runs = simulate(monkeypatch, **INSTANT)
    assert [r.outcome for r in realistic_runs] == [r.outcome for r in instant_runs] == ["success"]
    assert realistic_runs[0].started_at > instant_runs[0].started_at  # the label waited for the volume refresh
    assert realistic_wait > instant_wait


def test_a_controller_that_does_not_wait_for_the_refresh_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    _, runs = simulate(monkeypatch, controller={"config_propagation_s": 0, "tick_s": 5})
    assert runs and runs[0].outcome == "failed"  # mig-manager read the ConfigMap before the new entry reached it


@pytest.mark.parametrize(
    ("refresh_s", "speed", "expected"),
    [(60, 1, 90), (60, 30, 3), (60, 10, 9), (60, 7, 12.9), (0, 10, 0), (60, 0, 0)],
)
def test_twin_serve_names_the_controller_wait_for_its_speed(refresh_s: float, speed: float, expected: float) -> None:
    assert matching_config_propagation_s(refresh_s, speed) == pytest.approx(expected)


def test_the_settings_file_beside_the_kubeconfig_is_a_valid_run_config(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "twin.kubeconfig"
    written = write_controller_settings(kubeconfig, 4.5)
    assert written.parent == tmp_path and written.name.startswith("twin.kubeconfig")
    assert load_settings(written).controller.actuation.config_propagation_s == 4.5
