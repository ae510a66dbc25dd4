"""The twin's mig-manager against spec §1.2–1.4 and mig-parted's apply rules (§2.4–2.6)."""

from __future__ import annotations

from typing import Any

import pytest

from nvidia_protocol.labels import CLIENT_DEPLOY_LABEL, DEPLOY_LABELS, MIG_CONFIG_LABEL, MIG_STATE_LABEL, PAUSED
from simulations.twin import PodPhase, Twin
from simulations.twin.mig_manager import MigManagerBehaviour, MigManagerVersion
from solver.snapshot import parse_snapshot
from tests.twin_fixtures import CONFIG, T

ONE_G = [{"profile": "1g.5gb", "start": s} for s in range(7)]


def gpu(index: int, model: str = "A100-40GB", instances: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"index": index, "model": model, "instances": ONE_G if instances is None else instances}


def twin(
    *gpus: dict[str, Any],
    label: str | None = "all-1g",
    labels: dict[str, str] | None = None,
    version: MigManagerVersion | None = None,
) -> Twin:
    node_labels = dict(labels or {})
    if label:
        node_labels |= {MIG_CONFIG_LABEL: label, MIG_STATE_LABEL: "success"}
    node = {"name": "a", "labels": node_labels, "gpus": list(gpus) or [gpu(0), gpu(1)]}
    behaviour = MigManagerBehaviour() if version is None else MigManagerBehaviour(version=version)
    return Twin.from_snapshot(parse_snapshot({"nodes": [node]}), CONFIG, timings=T, behaviour=behaviour)


def held(*pods: str) -> list[dict[str, Any]]:
    """The 1g.5gb layout with the first instances held by `pods`."""
    return [dict(i, pod=pods[n]) if n < len(pods) else i for n, i in enumerate(ONE_G)]


def relabel(t: Twin, value: str | None) -> None:
    t.patch_node("a", labels={MIG_CONFIG_LABEL: value})


def layout(t: Twin, index: int) -> list[tuple[str, int, str | None]]:
    return [(i.profile, i.start, i.pod) for i in t.node("a").gpu(index).instances]


def test_already_applied_config_succeeds_without_pending_or_pausing() -> None:
    t = twin()
    t.restart_mig_manager("a")  # a pod start re-applies the current label (spec §1.2 consequence 1)
    t.run_until(T.assert_s - 1)
    assert t.mig_manager("a").busy and t.state_history("a") == []
    t.run_until_idle()
    assert t.now() == T.assert_s
    assert t.state_history("a") == []  # the label already said success: no transition at all
    assert t.mig_runs[-1].outcome == "success" and not t.mig_runs[-1].went_pending
    assert "Successfully updated to MIG config: all-1g" in t.mig_manager_log("a")
    assert all(c.new != PAUSED for c in t.label_log)
    assert t.allocatable("a")["nvidia.com/mig-1g.5gb"] == 14
    assert t.node("a").labels["nvidia.com/gpu.deploy.nvsm"] == "true"  # absent counts as "not false" (§1.3)


def test_reconfiguration_goes_pending_pauses_operands_and_restores_them() -> None:
    t = twin(labels={"nvidia.com/gpu.deploy.dcgm": "false"})
    relabel(t, "all-3g")
    t.run_until(T.assert_s)
    labels = t.node("a").labels
    assert labels[MIG_STATE_LABEL] == "pending"
    assert all(labels[k] == PAUSED for k in DEPLOY_LABELS if k != "nvidia.com/gpu.deploy.dcgm")
    assert labels["nvidia.com/gpu.deploy.dcgm"] == "false"
    assert t.allocatable("a")["nvidia.com/mig-1g.5gb"] == 0 and t.capacity("a")["nvidia.com/mig-1g.5gb"] == 14
    assert t.snapshot().nodes[0].allocatable["nvidia.com/mig-1g.5gb"] == 0

    done = T.assert_s + T.pause_s + 2 * T.apply_per_gpu_s
    t.run_until(done - 0.5)
    assert t.node("a").labels[MIG_STATE_LABEL] == "pending"
    t.run_until(done)
    labels = t.node("a").labels
    assert labels[MIG_STATE_LABEL] == "success"
    assert t.state_history("a") == ["pending", "success"]
    assert all(labels[k] == "true" for k in DEPLOY_LABELS if k != "nvidia.com/gpu.deploy.dcgm")
    assert labels["nvidia.com/gpu.deploy.dcgm"] == "false"
    assert layout(t, 0) == [("3g.20gb", 0, None), ("3g.20gb", 4, None)]
    assert t.allocatable("a").get("nvidia.com/mig-3g.20gb", 0) == 0  # the plugin pod is still starting

    t.run_until(done + T.restore_s)
    assert t.allocatable("a") == {"nvidia.com/gpu": 0, "nvidia.com/mig-1g.5gb": 0, "nvidia.com/mig-3g.20gb": 4}
    assert labels["nvidia.com/mig-3g.20gb.count"] == "4" and "nvidia.com/mig-1g.5gb.count" not in labels
    assert t.mig_manager_log("a")[-2:] == [
        "Successfully updated to MIG config: all-3g",
        "Waiting for change to 'nvidia.com/mig.config' label",
    ]


def test_same_value_relabel_does_nothing_and_remove_then_set_retries() -> None:
    t = twin(gpu(0, instances=held("ns/x")), gpu(1))
    relabel(t, "all-3g")
    t.run_until_idle()
    assert t.node("a").labels[MIG_STATE_LABEL] == "failed"
    runs = len(t.mig_runs)
    relabel(t, "all-3g")  # same value: the informer records nothing
    t.run_until_idle()
    assert len(t.mig_runs) == runs and not t.mig_manager("a").busy

    t.set_unschedulable("a", True)  # else the re-created pod lands on the same free device again
    t.evict("ns/x")
    relabel(t, None)  # removal while idle: nothing starts, the state label stays
    t.run_until_idle()
    assert len(t.mig_runs) == runs and t.node("a").labels[MIG_STATE_LABEL] == "failed"
    relabel(t, "all-3g")
    t.run_until_idle()
    assert len(t.mig_runs) == runs + 1 and t.mig_runs[-1].outcome == "success"


def test_changes_during_a_run_coalesce_to_the_latest_value() -> None:
    t = twin()
    relabel(t, "all-3g")
    t.run_until(1)
    relabel(t, "all-2g")
    relabel(t, "all-3g")  # A→B→A during the run of A: no second run
    t.run_until_idle()
    assert [r.config for r in t.mig_runs] == ["all-3g"]

    relabel(t, "all-1g")
    t.advance(T.assert_s + 1)
    relabel(t, "all-2g")
    relabel(t, "all-3g")  # only the latest differs from what was processed: one more run, of all-3g
    t.run_until_idle()
    assert [r.config for r in t.mig_runs] == ["all-3g", "all-1g", "all-3g"]
    assert all(r.outcome == "success" for r in t.mig_runs)


def test_label_removed_during_a_run_makes_the_next_run_fail_with_no_name() -> None:
    t = twin()
    relabel(t, "all-3g")
    t.run_until(1)
    relabel(t, None)
    t.run_until_idle()
    assert [(r.config, r.outcome) for r in t.mig_runs] == [("all-3g", "success"), ("", "failed")]
    assert "missing required flag 'selected-config'" in t.mig_runs[-1].message
    assert not t.mig_runs[-1].went_pending


def test_missing_name_fails_without_pending() -> None:
    t = twin()
    relabel(t, "no-such-config")
    t.run_until_idle()
    assert t.state_history("a") == ["failed"]
    assert t.mig_manager_log("a")[-2] == "Error: selected mig-config not present: no-such-config"
    assert layout(t, 0) == layout(twin(), 0)


def test_invalid_or_missing_file_fails_the_run() -> None:
    t = twin()
    t.write_mig_config("version: v2\nmig-configs: {}\n")
    relabel(t, "all-3g")
    t.run_until_idle()
    assert t.state_history("a") == ["failed"] and "unknown version" in t.mig_runs[-1].message
    t = Twin.from_snapshot(parse_snapshot({"nodes": [{"name": "a", "gpus": [gpu(0)]}]}), None, timings=T)
    relabel(t, "all-3g")
    t.run_until_idle()
    assert t.state_history("a") == ["failed"]


def test_busy_gpu_fails_in_use_and_leaves_instances_untouched() -> None:
    t = twin(gpu(0), gpu(1, instances=held("ns/x")), version="v0.12")
    before = [layout(t, 0), layout(t, 1)]
    relabel(t, "all-3g")
    t.run_until_idle()
    run = t.mig_runs[-1]
    assert run.outcome == "failed" and run.went_pending and "In use by another client" in run.message
    assert t.state_history("a") == ["pending", "failed"]
    assert layout(t, 1) == before[1] and t.pod("ns/x").phase == PodPhase.RUNNING
    assert layout(t, 0) == [("3g.20gb", 0, None), ("3g.20gb", 4, None)]  # GPU 0 came first: no rollback
    assert all(t.node("a").labels[k] == "true" for k in DEPLOY_LABELS)  # the bash script always restores
    assert t.allocatable("a")["nvidia.com/mig-1g.5gb"] == 7  # operands came back with what exists


def paused(t: Twin) -> list[str]:
    return sorted(k for k, v in t.node("a").labels.items() if v == PAUSED)


@pytest.mark.parametrize("version", ["v0.13", "v0.14", "v0.15"])
def test_after_a_full_run_the_go_port_leaves_operands_paused_when_a_run_fails(version: MigManagerVersion) -> None:
    t = twin(gpu(0), gpu(1), version=version)
    t.restart_mig_manager("a")  # a fresh process: the flags are clear, the current label is already applied
    t.run_until_idle()
    t.add_pod("ns/x", {"nvidia.com/mig-1g.5gb": 1}, owned=False)
    t.run_until_idle()
    relabel(t, "all-2g")  # holds ns/x's GPU: fails, and this process has never completed a run, so it restores
    t.run_until_idle()
    assert t.mig_runs[-1].outcome == "failed" and paused(t) == []

    t.delete_pod("ns/x")
    relabel(t, "all-3g")  # a full run: from now on this process no longer restores on failure
    t.run_until_idle()
    assert t.mig_runs[-1].outcome == "success" and paused(t) == []
    t.add_pod("ns/y", {"nvidia.com/mig-3g.20gb": 1}, owned=False)
    t.run_until_idle()
    relabel(t, "all-1g")
    t.run_until_idle()
    assert t.mig_runs[-1].outcome == "failed" and "In use by another client" in t.mig_runs[-1].message
    assert t.node("a").labels[MIG_STATE_LABEL] == "failed"
    assert paused(t) == sorted(DEPLOY_LABELS)
    assert all(v == 0 for v in t.allocatable("a").values())  # the device plugin stays down

    t.restart_mig_manager("a")  # a new process restores them on its next exit, whatever the outcome
    t.run_until_idle()
    assert t.mig_runs[-1].outcome == "failed" and paused(t) == []


def test_the_adopted_go_port_pod_has_already_completed_a_run() -> None:
    """The harsh default: a mig-manager already running when the twin begins applied its label itself."""
    t = twin(gpu(0), gpu(1, instances=held("ns/x")))
    relabel(t, "all-3g")
    t.run_until_idle()
    assert t.state_history("a") == ["pending", "failed"] and paused(t) == sorted(DEPLOY_LABELS)


def test_gpus_whose_map_is_unchanged_are_skipped_untouched() -> None:
    t = twin(gpu(0), gpu(1, instances=held("ns/x", "ns/y")))
    relabel(t, "gpu0-3g-gpu1-1g")
    t.run_until_idle()
    assert t.mig_runs[-1].outcome == "success"
    assert t.mig_runs[-1].finished_at - t.mig_runs[-1].started_at == T.assert_s + T.pause_s + T.apply_per_gpu_s
    assert layout(t, 1)[:2] == [("1g.5gb", 0, "ns/x"), ("1g.5gb", 1, "ns/y")]


def test_config_that_misses_a_gpu_never_asserts() -> None:
    t = twin()
    relabel(t, "gpu0-3g")
    t.run_until_idle()
    assert t.mig_runs[-1].outcome == "success" and layout(t, 1) == layout(twin(), 1)
    t.restart_mig_manager("a")
    t.run_until_idle()
    assert t.mig_runs[-1].went_pending  # GPU 1 is matched by no entry: every trigger re-runs the cycle


def test_profile_unknown_to_the_node_clears_the_gpus_and_reports_success() -> None:
    t = twin()
    relabel(t, "all-a30")  # 1g.6gb exists only on A30: the expansion is empty (spec §2.6)
    t.run_until_idle()
    assert t.mig_runs[-1].outcome == "success"
    assert "Successfully updated to MIG config: all-a30" in t.mig_manager_log("a")
    assert layout(t, 0) == [] and layout(t, 1) == []
    assert t.allocatable("a") == {"nvidia.com/gpu": 0, "nvidia.com/mig-1g.5gb": 0}
    assert [g.instances for g in t.snapshot().nodes[0].gpus] == [[], []]


def test_unknown_profile_under_single_strategy_leaves_gfd_invalid() -> None:
    t = twin(labels={"nvidia.com/mig.strategy": "single"})
    assert t.node("a").labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"
    relabel(t, "all-a30")
    t.run_until_idle()
    assert t.node("a").labels[MIG_STATE_LABEL] == "success"
    assert t.node("a").labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB-MIG-INVALID"
    assert t.node("a").labels["nvidia.com/gpu.count"] == "0" and t.allocatable("a") == {"nvidia.com/gpu": 0}


def test_profile_known_only_to_another_gpu_of_the_node_fails() -> None:
    t = twin(gpu(0), gpu(1, model="A30", instances=[]))
    relabel(t, "all-a30")
    t.run_until_idle()
    run = t.mig_runs[-1]
    assert run.outcome == "failed" and "MIG profile 1g.6gb not found on this GPU" in run.message
    assert "all orderings failed" in run.message
    assert layout(t, 0) == [] and layout(t, 1) == []  # GPU 0 cleared by the attempt; GPU 1 never reached


@pytest.mark.parametrize("version", ["v0.13", "v0.14", "v0.15"])
def test_a_timed_out_operand_wait_leaves_pending_and_the_next_label_change_runs(version: MigManagerVersion) -> None:
    t = twin(version=version)
    t.stuck_pending.add("a")
    relabel(t, "all-3g")
    t.run_until(T.assert_s + T.component_wait_s - 1)
    assert t.mig_manager("a").busy and t.mig_runs == []
    relabel(t, "all-2g")  # during the run: recorded, acted on once the run ends
    relabel(t, "all-3g")
    t.run_until(T.assert_s + T.component_wait_s)
    labels = t.node("a").labels
    assert not t.mig_manager("a").busy
    assert labels[MIG_STATE_LABEL] == "pending" and paused(t) == sorted(DEPLOY_LABELS)  # no setState at all
    assert t.state_history("a") == ["pending"]
    assert t.mig_runs[-1].outcome == "failed" and t.mig_runs[-1].finished_at == T.assert_s + T.component_wait_s
    assert "context deadline exceeded" in t.mig_manager_log("a")[-2]
    assert t.mig_manager_log("a")[-1] == "Waiting for change to 'nvidia.com/mig.config' label"
    assert all(v == 0 for v in t.allocatable("a").values())
    t.advance(3600)
    assert len(t.mig_runs) == 1  # all-2g then all-3g again during the run: nothing new to run

    relabel(t, "all-3g")  # the same value does nothing
    t.run_until_idle()
    assert len(t.mig_runs) == 1
    t.stuck_pending.clear()
    relabel(t, None)  # remove, then set again: the retry of spec §1.2
    relabel(t, "all-3g")
    t.run_until_idle()
    assert [r.outcome for r in t.mig_runs] == ["failed", "success"]
    assert labels[MIG_STATE_LABEL] == "success" and paused(t) == []  # a full run restores (to `true`)
    assert all(labels[k] == "true" for k in DEPLOY_LABELS)
    assert t.allocatable("a")["nvidia.com/mig-3g.20gb"] == 4


def test_a_label_change_after_the_timeout_is_run() -> None:
    t = twin()
    t.stuck_pending.add("a")
    relabel(t, "all-3g")
    t.run_until(T.assert_s + T.component_wait_s + 1)
    t.stuck_pending.clear()
    relabel(t, "all-2g")
    t.run_until_idle()
    assert [(r.config, r.outcome) for r in t.mig_runs] == [("all-3g", "failed"), ("all-2g", "success")]
    assert paused(t) == [] and t.allocatable("a")["nvidia.com/mig-2g.10gb"] == 6


def test_after_a_timed_out_wait_the_go_ports_already_applied_shortcut_leaves_operands_paused() -> None:
    t = twin()
    t.stuck_pending.add("a")
    relabel(t, "all-3g")
    t.run_until(T.assert_s + T.component_wait_s + 1)
    relabel(t, "all-1g")  # what the GPUs still have: success at once, and setState restores nothing
    t.run_until_idle()
    assert t.node("a").labels[MIG_STATE_LABEL] == "success" and paused(t) == sorted(DEPLOY_LABELS)


def test_the_bash_script_carries_on_after_a_timed_out_wait() -> None:
    t = twin(version="v0.12")
    t.stuck_pending.add("a")
    relabel(t, "all-3g")
    t.run_until_idle()
    assert "error: timed out waiting for the condition" in t.mig_manager_log("a")
    run = t.mig_runs[-1]
    assert run.outcome == "success" and run.finished_at == T.assert_s + T.component_wait_s + 2 * T.apply_per_gpu_s
    assert t.state_history("a") == ["pending", "success"] and paused(t) == []


@pytest.mark.parametrize("version", ["v0.12", "v0.15"])
def test_operands_released_before_the_timeout_let_the_run_carry_on(version: MigManagerVersion) -> None:
    t = twin(version=version)
    t.stuck_pending.add("a")
    relabel(t, "all-3g")
    t.run_until(T.assert_s + 100)
    t.stuck_pending.clear()
    t.run_until_idle()
    run = t.mig_runs[-1]
    assert run.outcome == "success" and T.assert_s + 100 < run.finished_at <= T.assert_s + 101 + 2 * T.apply_per_gpu_s
    assert paused(t) == []


@pytest.mark.parametrize(("version", "client"), [("v0.15", PAUSED), ("v0.14", "true")])
def test_only_v0_15_pauses_the_third_party_client_label(version: MigManagerVersion, client: str) -> None:
    t = twin(labels={CLIENT_DEPLOY_LABEL: "true"}, version=version)
    relabel(t, "all-3g")
    t.run_until(T.assert_s)
    assert t.node("a").labels[CLIENT_DEPLOY_LABEL] == client
    t.run_until_idle()
    assert t.node("a").labels[CLIENT_DEPLOY_LABEL] == "true"


def test_mig_disabled_gpus_are_whole_gpus() -> None:
    t = twin()
    relabel(t, "all-disabled")
    t.run_until_idle()
    assert t.mig_runs[-1].outcome == "success"
    assert all(not g.mig_enabled for g in t.node("a").gpus)
    assert t.allocatable("a") == {"nvidia.com/gpu": 2, "nvidia.com/mig-1g.5gb": 0}
    relabel(t, "all-1g")
    t.run_until_idle()
    assert t.mig_runs[-1].outcome == "success" and t.allocatable("a")["nvidia.com/mig-1g.5gb"] == 14


def test_mode_change_refuses_a_busy_gpu() -> None:
    t = twin(gpu(0, instances=held("ns/x")), gpu(1))
    relabel(t, "all-disabled")
    t.run_until_idle()
    assert t.mig_runs[-1].outcome == "failed" and "In use by another client" in t.mig_runs[-1].message
    assert t.node("a").gpu(0).mig_enabled and layout(t, 0)[0] == ("1g.5gb", 0, "ns/x")


@pytest.mark.parametrize("value", ["all-3g", "all-2g"])
def test_a_run_is_deterministic(value: str) -> None:
    def trace() -> list[object]:
        t = twin()
        relabel(t, value)
        t.run_until_idle()
        return [c.model_dump() for c in t.label_log] + [t.snapshot().model_dump()]

    assert trace() == trace()


@pytest.mark.parametrize("strategy", ["mixed", "single"])
def test_a_waiting_pod_binds_once_the_new_devices_are_advertised(strategy: str) -> None:
    t = twin(labels={"nvidia.com/mig.strategy": strategy})
    if strategy == "single":
        selector = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-3g.20gb"}
        pod = t.add_pod("ns/big", {"nvidia.com/gpu": 1}, node_selector=selector)
    else:
        pod = t.add_pod("ns/big", {"nvidia.com/mig-3g.20gb": 1})
    assert pod.phase == PodPhase.PENDING
    relabel(t, "all-3g")
    done = T.assert_s + T.pause_s + 2 * T.apply_per_gpu_s
    t.run_until(done + T.restore_s - 1)
    assert pod.phase == PodPhase.PENDING
    t.run_until(done + T.restore_s)
    assert pod.phase == PodPhase.RUNNING and pod.devices[0].profile == "3g.20gb"
    assert t.node("a").gpu(0).instances[0].pod == "ns/big"
