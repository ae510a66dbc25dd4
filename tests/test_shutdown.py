"""A stopping controller (SIGTERM) finishes or hands over the step in flight: it advances the changes it
started, plans nothing new, and says which nodes the next leader must resume."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from migopt.run import Runner
from migopt.settings import load_settings
from optimizer.actuators.node_record import load_records
from optimizer.controller.actuator import ACTIVE
from simulations.twin.api import write_kubeconfig
from simulations.twin.state import PodPhase
from tests.controller_fixtures import mig_controller
from tests.test_controller import cluster, converged, settings


def test_a_stopping_controller_finishes_its_changes_and_plans_nothing_new() -> None:
    twin = cluster()
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1}, priority=10)
    controller = mig_controller(twin, settings())
    while not any(r.phase in ACTIVE for r in load_records(twin).values()):
        controller.tick()
        twin.advance(5)
    plans = controller.plans_made
    twin.add_pod("team/late", {"nvidia.com/mig-7g.40gb": 1}, priority=10)  # arrives after SIGTERM
    remaining = controller.finish_in_flight()
    assert remaining == ["n0"]  # mig-manager takes minutes: still in flight after one step
    for _ in range(120):
        twin.advance(5)
        if not controller.finish_in_flight():
            break
    assert controller.plans_made == plans  # nothing new was planned while stopping
    assert twin.pod("team/big").phase == PodPhase.RUNNING
    assert twin.pod("team/late").phase == PodPhase.PENDING
    converged(twin)  # uncordoned, nothing active


def test_a_replica_that_lost_its_lease_leaves_the_changes_alone() -> None:
    twin = cluster()
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1}, priority=10)
    leading = [True]
    controller = mig_controller(twin, settings(), may_act=lambda: leading[0])
    while not any(r.phase in ACTIVE for r in load_records(twin).values()):
        controller.tick()
        twin.advance(5)
    before = {name: r.phase for name, r in load_records(twin).items()}
    leading[0] = False
    assert controller.finish_in_flight() == []
    assert {name: r.phase for name, r in load_records(twin).items()} == before


def test_the_grace_period_bounds_the_wait_and_names_the_nodes_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")  # never contacted
    runner = Runner(load_settings(kubeconfig=str(kubeconfig), metrics_port=0, shutdown_grace_s=20, interval_s=0.001))
    calls: list[float] = []
    now = [0.0]

    def still_applying() -> list[str]:
        calls.append(now[0])
        now[0] += 7.0  # each pass takes 7 s of the grace period
        return ["gpu-node-3"]

    monkeypatch.setattr(runner.controller, "finish_in_flight", still_applying)
    with caplog.at_level(logging.WARNING):
        assert runner.finish_in_flight(clock=lambda: now[0]) == ["gpu-node-3"]
    assert calls == [0.0, 7.0, 14.0]  # stopped at the 20 s grace period
    assert "gpu-node-3" in caplog.text and "next leader resumes" in caplog.text
