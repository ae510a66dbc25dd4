"""mig-manager runs that leave a node broken (the Go port, v0.13-v0.15: the twin's default): the controller finds
them on every node, reports each once (Event, metric, log), and repairs only the nodes whose change it started."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvidia_protocol.labels import (
    DEPLOY_LABELS,
    DEPLOY_PREFIX,
    DEVICE_PLUGIN_DEPLOY_LABEL,
    MIG_CONFIG_LABEL,
    MIG_STATE_LABEL,
    PAUSED,
)
from optimizer.actuators.node_record import ChangeRecord, load_records
from optimizer.actuators.wedges import (
    Wedge,
    WedgeKind,
    find_wedge,
    repair_plan,
    restored_values,
    started_by_migopt,
)
from optimizer.controller.actuator import ActuationSettings, Phase
from optimizer.controller.port import ClusterPort
from optimizer.controller.reconcile import Controller, ControllerSettings
from optimizer.metrics.exporter import MetricsObserver
from simulations.twin import Twin
from simulations.twin.state import PodPhase
from solver.snapshot import ClusterSnapshot, GpuState, InstanceState, NodeState
from tests.controller_fixtures import mig_controller

CONFIG = """version: v1
mig-configs:
  all-balanced:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}
  all-1g:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.5gb": 7}
"""
WEDGE_REASONS = ("MigOperandsLeftPaused", "MigRunTimedOut")
REPAIR_REASONS = ("MigOperandsRestored", "MigRunRetriggered")


def cluster(nodes: int = 1) -> Twin:
    """A100-40GB nodes with 2 GPUs at all-balanced, nothing running; mig-managers as the twin's default (v0.15,
    already through a full run)."""
    layout = [("3g.20gb", 4), ("2g.10gb", 0), ("1g.5gb", 2), ("1g.5gb", 3)]
    gpus = [GpuState(index=g, model="A100-40GB", instances=[InstanceState(profile=p, start=s) for p, s in layout])
            for g in range(2)]  # fmt: skip
    labels = {MIG_CONFIG_LABEL: "all-balanced", MIG_STATE_LABEL: "success"}
    states = [NodeState(name=f"n{n}", labels=labels, gpus=gpus) for n in range(nodes)]
    return Twin.from_snapshot(ClusterSnapshot(nodes=states), CONFIG)


def settings(mode: str = "enforce", **actuation: object) -> ControllerSettings:
    return ControllerSettings.model_validate(
        {"mode": mode, "batch_idle_s": 0, "batch_timeout_s": 0, "actuation": ActuationSettings(**actuation)}
    )


def run(twin: Twin, controller: Controller, seconds: float, step: float = 5.0) -> None:
    for _ in range(int(seconds / step)):
        controller.tick()
        twin.advance(step)


def run_until(twin: Twin, controller: Controller, done: object, limit_s: float = 3000, step: float = 5.0) -> None:
    for _ in range(int(limit_s / step)):
        controller.tick()
        if callable(done) and done():
            return
        twin.advance(step)
    raise AssertionError("the condition never held")


def reasons(twin: Twin, node: str) -> list[str]:
    return [e.reason for e in twin.events if e.name == node and e.reason in WEDGE_REASONS + REPAIR_REASONS]


def events(twin: Twin, reason: str) -> list[str]:
    return [e.message for e in twin.events if e.reason == reason]


def paused(twin: Twin, node: str) -> list[str]:
    return sorted(k for k, v in twin.node(node).labels.items() if v == PAUSED)


def writes_after(twin: Twin, node: str, since: float, keys: tuple[str, ...]) -> list[tuple[str, str | None]]:
    return [(c.key, c.new) for c in twin.label_log if c.node == node and c.time >= since and c.key in keys]


def phase(twin: Twin, node: str) -> Phase | None:
    record = load_records(twin).get(node)
    return None if record is None else record.phase


def applying_and_pending(twin: Twin, node: str = "n0") -> bool:
    return phase(twin, node) is Phase.APPLYING and twin.node(node).labels.get(MIG_STATE_LABEL) == "pending"


def hold_with_a_host_process(twin: Twin, node: str = "n0") -> None:
    """A GPU client outside Kubernetes (no pod, so no eviction) opens a device of GPU 0: mig-parted's destroy
    fails with "In use by another client"."""
    twin.node(node).gpu(0).instances[0].pod = "host/process"


def test_a_run_that_timed_out_on_a_node_migopt_changed_is_retriggered_and_the_change_completes() -> None:
    twin = cluster()
    twin.stuck_pending.add("n0")
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1})
    observer = MetricsObserver()
    controller = mig_controller(twin, settings(), observer=observer)
    run_until(twin, controller, lambda: applying_and_pending(twin))
    labelled_at = load_records(twin)["n0"].labelled_at
    assert labelled_at is not None
    twin.advance(twin.timings.component_wait_s + 30)
    assert not twin.mig_manager("n0").busy  # the run gave up: pending, operands paused, no state
    assert paused(twin, "n0") and twin.node("n0").labels[MIG_STATE_LABEL] == "pending"
    twin.stuck_pending.clear()  # the operand pod has gone by now, but nothing asks mig-manager to run again

    run_until(twin, controller, lambda: reasons(twin, "n0") != [])
    assert twin.now() - labelled_at >= ActuationSettings().pending_timeout_s
    assert reasons(twin, "n0") == ["MigRunTimedOut", "MigRunRetriggered"]
    assert "removes and sets nvidia.com/mig.config again" in events(twin, "MigRunTimedOut")[0]
    target = load_records(twin)["n0"].target
    retried = writes_after(twin, "n0", twin.now(), (MIG_CONFIG_LABEL,))
    assert retried == [(MIG_CONFIG_LABEL, None), (MIG_CONFIG_LABEL, target)]  # removed, then set again

    run_until(twin, controller, lambda: phase(twin, "n0") is Phase.DONE)
    assert twin.pod("team/big").phase == PodPhase.RUNNING
    assert load_records(twin)["n0"].failed_runs == 1 and paused(twin, "n0") == []
    assert reasons(twin, "n0") == ["MigRunTimedOut", "MigRunRetriggered"]  # reported once, repaired once
    assert observer.registry.get_sample_value("migopt_mig_manager_wedges_total", {"kind": "pending_timed_out"}) == 1
    assert observer.registry.get_sample_value("migopt_mig_manager_repairs_total", {"action": "retriggered"}) == 1
    assert observer.registry.get_sample_value("migopt_node_operands_paused", {"node": "n0"}) == 0
    assert not twin.node("n0").unschedulable


def test_runs_that_keep_timing_out_end_the_change_after_its_retries_and_then_the_operands_are_restored() -> None:
    twin = cluster()
    twin.stuck_pending.add("n0")  # for good
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1})
    controller = mig_controller(twin, settings(max_retries=1))
    run_until(twin, controller, lambda: phase(twin, "n0") is Phase.FAILED)
    expected = ["MigRunTimedOut", "MigRunRetriggered", "MigRunTimedOut", "MigOperandsRestored"]
    assert reasons(twin, "n0") == expected
    assert "mig-manager failed 2 times" in events(twin, "MigReconfigurationFailed")[0]
    assert paused(twin, "n0") == [] and not twin.node("n0").unschedulable
    assert twin.allocatable("n0")["nvidia.com/mig-3g.20gb"] == 0  # the device plugin is starting again
    run(twin, controller, 100)
    assert reasons(twin, "n0") == expected and twin.allocatable("n0")["nvidia.com/mig-3g.20gb"] == 2


def test_a_controller_restarted_on_every_pass_retriggers_on_time_from_its_record() -> None:
    """When migopt labelled the node is in its record, not in the process: restarts do not delay the repair."""
    twin = cluster()
    twin.stuck_pending.add("n0")
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1})
    first = mig_controller(twin, settings())
    run_until(twin, first, lambda: applying_and_pending(twin))
    twin.advance(twin.timings.component_wait_s + 30)
    twin.stuck_pending.clear()
    labelled_at = load_records(twin)["n0"].labelled_at or 0.0
    for _ in range(200):
        mig_controller(twin, settings()).tick()  # a new process each pass: it has seen nothing before
        if events(twin, "MigRunRetriggered"):
            break
        twin.advance(5)
    assert labelled_at + 600 <= twin.now() < labelled_at + 605
    run_until(twin, first, lambda: phase(twin, "n0") is Phase.DONE)
    assert len(events(twin, "MigRunRetriggered")) == 1 and paused(twin, "n0") == []


class SlowLabelWrites:
    """The twin, with every write of the config label landing 3 s late (a 429 or a conflict, retried)."""

    def __init__(self, twin: Twin) -> None:
        self._twin = twin

    def __getattr__(self, name: str) -> object:
        return getattr(self._twin, name)

    def patch_node(self, node: str, *, labels: Mapping[str, str | None] = {}, **kw: Any) -> None:
        if labels.get(MIG_CONFIG_LABEL):
            self._twin.advance(3)
        self._twin.patch_node(node, labels=labels, **kw)


def test_the_labelling_time_is_when_the_label_landed_so_a_slow_write_does_not_look_like_a_timeout() -> None:
    twin = cluster()
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1})
    port = cast(ClusterPort, SlowLabelWrites(twin))
    controller = mig_controller(port, settings())
    run_until(twin, controller, lambda: applying_and_pending(twin))
    landed = [c.time for c in twin.label_log if c.key == MIG_CONFIG_LABEL and c.new][-1]
    assert load_records(twin)["n0"].labelled_at == landed


def test_operands_a_failed_run_left_paused_are_restored_once_migopts_change_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    twin = cluster()
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1})
    observer = MetricsObserver()
    controller = mig_controller(twin, settings(max_retries=1), observer=observer)
    run_until(twin, controller, lambda: applying_and_pending(twin))
    hold_with_a_host_process(twin)
    before = {k: v for k, v in twin.node("n0").labels.items() if k.startswith(DEPLOY_PREFIX)}
    assert before == {k: PAUSED for k in DEPLOY_LABELS}

    twin.advance(60)  # mig-manager fails "In use" and, as a process past a full run, restores nothing
    assert twin.node("n0").labels[MIG_STATE_LABEL] == "failed" and paused(twin, "n0") == sorted(DEPLOY_LABELS)
    controller.tick()
    assert observer.registry.get_sample_value("migopt_node_operands_paused", {"node": "n0"}) == 1
    with caplog.at_level(logging.INFO, logger="optimizer.actuators.wedges"):
        run_until(twin, controller, lambda: "MigOperandsRestored" in reasons(twin, "n0"))
    assert phase(twin, "n0") is Phase.FAILED  # the retry failed too: the change ended, then the repair
    assert reasons(twin, "n0").count("MigOperandsLeftPaused") == 2  # the first run's, the retry's
    assert "left to migopt's change in progress" in events(twin, "MigOperandsLeftPaused")[0]
    restored = events(twin, "MigOperandsRestored")
    assert len(restored) == 1 and "nvidia.com/gpu.deploy.device-plugin=true" in restored[0]
    labels = twin.node("n0").labels
    assert all(labels[k] == "true" for k in DEPLOY_LABELS)  # what they were before the change
    assert labels[MIG_STATE_LABEL] == "failed"  # mig-manager's label: never written by migopt
    assert any("wedge=operands_left_paused" in r.message for r in caplog.records)
    assert any("restored nvidia.com/gpu.deploy" in r.message for r in caplog.records)

    twin.advance(60)
    controller.tick()
    assert twin.allocatable("n0")["nvidia.com/mig-3g.20gb"] == 2  # the device plugin is back, layout unchanged
    assert observer.registry.get_sample_value("migopt_mig_manager_wedges_total", {"kind": "operands_left_paused"}) == 2
    assert observer.registry.get_sample_value("migopt_mig_manager_repairs_total", {"action": "restored"}) == 1
    assert not twin.node("n0").unschedulable
    run(twin, controller, 120)
    assert events(twin, "MigOperandsRestored") == restored  # nothing left to repair: no more writes


def test_a_pending_that_outlived_a_change_that_failed_on_its_deadline_gets_its_operands_restored() -> None:
    twin = cluster()
    twin.stuck_pending.add("n0")
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1})
    controller = mig_controller(twin, settings(apply_timeout_s=200))  # ends the change before pending_timeout_s
    run_until(twin, controller, lambda: phase(twin, "n0") is Phase.FAILED)
    assert reasons(twin, "n0") == []  # not yet: mig-manager may still be waiting for the operands
    run_until(twin, controller, lambda: "MigOperandsRestored" in reasons(twin, "n0"))
    assert reasons(twin, "n0") == ["MigRunTimedOut", "MigOperandsRestored"]
    assert "ended failed" in events(twin, "MigRunTimedOut")[0]
    assert paused(twin, "n0") == [] and twin.node("n0").labels[MIG_STATE_LABEL] == "pending"
    run(twin, controller, 200)  # still `pending` (mig-manager's to change), but nothing more to report or write
    assert reasons(twin, "n0") == ["MigRunTimedOut", "MigOperandsRestored"]


@pytest.mark.parametrize("mode", ["off", "recommend"])
def test_with_repair_off_or_in_recommend_mode_a_wedge_is_reported_and_nothing_written(mode: str) -> None:
    twin = cluster()
    twin.stuck_pending.add("n0")
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1})
    observer = MetricsObserver()
    controller = mig_controller(twin, settings(repair_paused_operands=False), observer=observer)
    run_until(twin, controller, lambda: applying_and_pending(twin))
    if mode == "recommend":
        controller = mig_controller(twin, settings("recommend"), observer=observer)  # after a switch of mode
    since = twin.now() + 0.001  # after mig-manager's own pause
    run(twin, controller, 1100)  # the change fails on its deadline (900 s); its quarantine outlasts this
    assert reasons(twin, "n0") == ["MigRunTimedOut"]
    why = "repair_paused_operands is off" if mode == "off" else "recommend mode"
    assert f"not repaired: {why}" in events(twin, "MigRunTimedOut")[0]
    assert writes_after(twin, "n0", since, (MIG_CONFIG_LABEL, *DEPLOY_LABELS)) == []
    assert paused(twin, "n0") == sorted(DEPLOY_LABELS) and twin.node("n0").labels[MIG_STATE_LABEL] == "pending"
    assert observer.registry.get_sample_value("migopt_mig_manager_wedges_total", {"kind": "pending_timed_out"}) == 1
    assert observer.registry.get_sample_value("migopt_mig_manager_repairs_total", {"action": "restored"}) == 0
    assert observer.registry.get_sample_value("migopt_node_operands_paused", {"node": "n0"}) == 1


def test_a_node_someone_else_relabelled_is_reported_and_never_touched() -> None:
    twin = cluster(nodes=2)
    twin.stuck_pending.add("n1")
    hold_with_a_host_process(twin, "n0")
    twin.patch_node("n0", labels={MIG_CONFIG_LABEL: "all-1g"})  # an administrator, not migopt
    twin.patch_node("n1", labels={MIG_CONFIG_LABEL: "all-1g"})
    controller = mig_controller(twin, settings())
    run(twin, controller, 1500)
    assert reasons(twin, "n0") == ["MigOperandsLeftPaused"] and reasons(twin, "n1") == ["MigRunTimedOut"]
    assert all("not repaired: migopt did not set the label this run answered" in m for m in
               events(twin, "MigOperandsLeftPaused") + events(twin, "MigRunTimedOut"))  # fmt: skip
    for node in ("n0", "n1"):
        assert writes_after(twin, node, 1, (MIG_CONFIG_LABEL, *DEPLOY_LABELS)) == [
            (k, PAUSED) for k in DEPLOY_LABELS
        ]  # mig-manager's pause, and nothing after it
        assert paused(twin, node) == sorted(DEPLOY_LABELS)


def test_a_node_migopt_changed_then_someone_relabelled_is_not_migopts_to_repair() -> None:
    twin = cluster()
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1}, duration_s=100)
    controller = mig_controller(twin, settings())
    run_until(twin, controller, lambda: phase(twin, "n0") is Phase.DONE)
    run(twin, controller, 200)  # the pod finishes; nothing pending
    hold_with_a_host_process(twin)
    since = twin.now()
    twin.patch_node("n0", labels={MIG_CONFIG_LABEL: "all-1g"})
    run(twin, controller, 600)
    assert reasons(twin, "n0") == ["MigOperandsLeftPaused"]
    assert "migopt did not set the label" in events(twin, "MigOperandsLeftPaused")[0]
    assert writes_after(twin, "n0", since + 1, DEPLOY_LABELS) == [(k, PAUSED) for k in DEPLOY_LABELS]


# ---- the decisions, without a cluster ------------------------------------------------------------------------


def node(labels: dict[str, str]) -> NodeState:
    return NodeState(name="n", labels=labels, gpus=[])


def record(phase: Phase = Phase.DONE, labelled: bool = True, **extra: object) -> ChangeRecord:
    return ChangeRecord.model_validate(
        {"plan_id": "plan-1", "phase": phase, "target": "migopt-1", "evict": {}, "expected": {}, "deadline": 0,
         "labelled": labelled, "labelled_at": 0.0, **extra}
    )  # fmt: skip


WEDGED = {MIG_CONFIG_LABEL: "migopt-1", MIG_STATE_LABEL: "failed", DEVICE_PLUGIN_DEPLOY_LABEL: PAUSED}


def test_find_wedge_needs_a_finished_state_with_paused_operands_or_an_old_pending() -> None:
    s = ActuationSettings(pending_timeout_s=600)
    wedge = find_wedge(node(WEDGED), None, 0, s)
    assert wedge is not None and wedge.kind is WedgeKind.OPERANDS_LEFT_PAUSED
    assert wedge.paused == (DEVICE_PLUGIN_DEPLOY_LABEL,)
    during = {**WEDGED, MIG_STATE_LABEL: "pending"}
    assert find_wedge(node(during), 100, 699, s) is None  # a run in progress pauses them too
    timed_out = find_wedge(node(during), 100, 700, s)
    assert timed_out is not None and timed_out.kind is WedgeKind.PENDING_TIMED_OUT and timed_out.pending_s == 600
    assert find_wedge(node({**WEDGED, DEVICE_PLUGIN_DEPLOY_LABEL: "true"}), None, 0, s) is None
    assert find_wedge(node({**WEDGED, DEVICE_PLUGIN_DEPLOY_LABEL: "false"}), None, 0, s) is None


def test_only_migopts_own_labelled_change_with_its_label_still_in_place_is_its_to_repair() -> None:
    assert started_by_migopt(record(), node(WEDGED))
    assert not started_by_migopt(None, node(WEDGED))
    assert not started_by_migopt(record(labelled=False), node(WEDGED))  # abandoned before it set the label
    assert not started_by_migopt(record(), node({**WEDGED, MIG_CONFIG_LABEL: "all-1g"}))
    assert not started_by_migopt(record(), node({k: v for k, v in WEDGED.items() if k != MIG_CONFIG_LABEL}))


def wedge(kind: WedgeKind, state: str) -> Wedge:
    return Wedge(node="n", kind=kind, config="migopt-1", state=state, paused=(DEVICE_PLUGIN_DEPLOY_LABEL,))


@pytest.mark.parametrize(
    ("kind", "state", "phase", "expected"),
    [
        (WedgeKind.OPERANDS_LEFT_PAUSED, "failed", Phase.DONE, "restore"),
        (WedgeKind.OPERANDS_LEFT_PAUSED, "failed", Phase.FAILED, "restore"),
        (WedgeKind.OPERANDS_LEFT_PAUSED, "success", Phase.APPLYING, "restore"),  # the change waits for devices
        (WedgeKind.OPERANDS_LEFT_PAUSED, "failed", Phase.APPLYING, "defer"),  # the change retries first
        (WedgeKind.PENDING_TIMED_OUT, "pending", Phase.APPLYING, "retrigger"),
        (WedgeKind.PENDING_TIMED_OUT, "pending", Phase.LABELLING, "defer"),
        (WedgeKind.PENDING_TIMED_OUT, "pending", Phase.FAILED, "restore"),
    ],
)
def test_repair_plan(kind: WedgeKind, state: str, phase: Phase, expected: str) -> None:
    """What a wedge on a node migopt labelled gets, by its change's phase; never more than a report otherwise."""
    labels = {**WEDGED, MIG_STATE_LABEL: state}
    s = ActuationSettings()
    assert repair_plan(wedge(kind, state), record(phase), node(labels), s, may_repair=True)[0] == expected
    assert repair_plan(wedge(kind, state), record(phase), node(labels), s, may_repair=False)[0] == "report"
    off = ActuationSettings(repair_paused_operands=False)
    assert repair_plan(wedge(kind, state), record(phase), node(labels), off, may_repair=True)[0] == "report"
    assert repair_plan(wedge(kind, state), None, node(labels), s, may_repair=True)[0] == "report"


def test_a_timed_out_pending_whose_operands_are_back_needs_nothing_more_once_the_change_ended() -> None:
    restored = Wedge(node="n", kind=WedgeKind.PENDING_TIMED_OUT, config="migopt-1", state="pending", paused=())
    labels = {MIG_CONFIG_LABEL: "migopt-1", MIG_STATE_LABEL: "pending"}
    assert repair_plan(restored, record(Phase.FAILED), node(labels), ActuationSettings(), True)[0] == "report"
    assert repair_plan(restored, record(Phase.APPLYING), node(labels), ActuationSettings(), True)[0] == "retrigger"


values = st.sampled_from(["true", "false", PAUSED, "custom"])
deploy_keys = st.sampled_from([*DEPLOY_LABELS, DEPLOY_PREFIX + "client"])


@given(before=st.dictionaries(deploy_keys, values), paused_now=st.sets(deploy_keys))
def test_a_restore_writes_exactly_the_paused_labels_never_paused_and_keeps_earlier_values(
    before: dict[str, str], paused_now: set[str]
) -> None:
    written = restored_values(record(operands=before), tuple(sorted(paused_now)))
    assert set(written) == paused_now
    assert PAUSED not in written.values()
    for label, value in written.items():
        assert value == (before[label] if before.get(label) not in (None, PAUSED) else "true")


def test_only_the_operands_mig_manager_pauses_are_migopts_to_restore() -> None:
    """The GPU Operator's other deploy labels (driver, toolkit, sandbox) are never read as paused operands nor
    recorded for restoring, whatever value they hold."""
    from optimizer.actuators.wedges import deploy_labels, paused_operands

    labels = {
        "nvidia.com/gpu.deploy.device-plugin": "paused-for-mig-change",
        "nvidia.com/gpu.deploy.driver": "paused-for-mig-change",
        "nvidia.com/gpu.deploy.sandbox-device-plugin": "false",
    }
    assert paused_operands(labels) == ("nvidia.com/gpu.deploy.device-plugin",)
    assert deploy_labels(labels) == {"nvidia.com/gpu.deploy.device-plugin": "paused-for-mig-change"}
