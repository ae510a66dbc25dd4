"""The real controller (reconcile loop + actuation) driving the twin, with the faults the issue lists injected.

After every scenario: no pod evicted outside a plan, no node left cordoned, and the cluster converges.
"""

from __future__ import annotations

from collections.abc import Callable

from nvidia_protocol.labels import MIG_CONFIG_LABEL, MIG_STATE_LABEL
from nvidia_protocol.migparted import parse_config
from optimizer.actuators.node_record import PHASE, load_records
from optimizer.controller.actuator import ACTIVE, ActuationSettings, Phase
from optimizer.controller.port import EvictionOutcome
from optimizer.controller.reconcile import Controller, ControllerSettings
from simulations.twin import Twin
from simulations.twin.mig_manager import MigManagerTimings
from simulations.twin.state import PodPhase
from solver.plan import Plan
from solver.snapshot import ClusterSnapshot, GpuState, InstanceState, NodeState
from tests.controller_fixtures import mig_controller

BALANCED = "all-balanced"
CONFIG = """version: v1
mig-configs:
  all-balanced:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}
"""


def cluster(nodes: int = 1, gpus: int = 2, holders: dict[tuple[int, int], str] | None = None) -> Twin:
    """A100-40GB nodes at all-balanced; `holders` maps (node, gpu) to a running pod on its 3g.20gb."""
    holders = holders or {}
    states = []
    for n in range(nodes):
        gpu_states = []
        for g in range(gpus):
            layout = [("3g.20gb", 4), ("2g.10gb", 0), ("1g.5gb", 2), ("1g.5gb", 3)]
            instances = [
                InstanceState(profile=p, start=s, pod=holders.get((n, g)) if p == "3g.20gb" else None)
                for p, s in layout
            ]
            gpu_states.append(GpuState(index=g, model="A100-40GB", instances=instances))
        labels = {MIG_CONFIG_LABEL: BALANCED, MIG_STATE_LABEL: "success"}
        states.append(NodeState(name=f"n{n}", labels=labels, gpus=gpu_states))
    return Twin.from_snapshot(ClusterSnapshot(nodes=states), CONFIG)


def settings(mode: str = "enforce", **actuation: float) -> ControllerSettings:
    return ControllerSettings.model_validate(
        {"mode": mode, "batch_idle_s": 0, "batch_timeout_s": 0, "actuation": ActuationSettings(**actuation)}
    )


def run(twin: Twin, make: Callable[[], Controller], seconds: float, step: float = 5.0) -> list[Plan]:
    """Tick every `step` simulated seconds; `make` is called each tick (a fresh one simulates a restart).
    Returns the plans made."""
    plans = []
    for _ in range(int(seconds / step)):
        plan = make().tick()
        if plan is not None:
            plans.append(plan)
        twin.advance(step)
    return plans


def converged(twin: Twin) -> None:
    snapshot = twin.snapshot()
    records = load_records(twin).values()
    assert not any(r.phase in ACTIVE for r in records)
    assert not any(n.unschedulable for n in snapshot.nodes)
    assert not any(r.cordoned for r in records)


def test_enforce_reconfigures_a_node_and_serves_the_pod() -> None:
    twin = cluster()
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1}, priority=10)
    controller = mig_controller(twin, settings())
    run(twin, lambda: controller, 600)
    node = twin.node("n0")
    assert twin.pod("team/big").phase == PodPhase.RUNNING
    assert node.labels[MIG_CONFIG_LABEL].startswith("migopt-") and node.labels[MIG_STATE_LABEL] == "success"
    assert node.annotations[PHASE] == Phase.DONE
    assert node.labels[MIG_CONFIG_LABEL] in parse_config(twin.read_mig_config() or "").mig_configs
    assert twin.evictions == []
    converged(twin)


def test_only_the_planned_pods_are_evicted() -> None:
    twin = cluster(gpus=2, holders={(0, 0): "low/a", (0, 1): "low/b"})
    for pod in ("low/a", "low/b"):
        assert twin.pod(pod).phase == PodPhase.RUNNING
    twin.add_pod("high/big", {"nvidia.com/mig-7g.40gb": 1}, priority=100)
    controller = mig_controller(twin, settings())
    plans = run(twin, lambda: controller, 900)
    planned = {pod for plan in plans for pod in plan.evictions}
    assert len(planned) == 1
    assert {e.pod for e in twin.evictions} == planned
    assert twin.pod("high/big").phase == PodPhase.RUNNING
    converged(twin)


def test_recommend_mode_touches_nothing() -> None:
    twin = cluster(holders={(0, 0): "low/a"})
    twin.add_pod("high/big", {"nvidia.com/mig-7g.40gb": 1}, priority=100)
    controller = mig_controller(twin, settings(mode="recommend"))
    run(twin, lambda: controller, 300)
    assert controller.last_plan is not None and controller.last_plan.objectives.reconfigured_gpus == 1
    assert twin.evictions == [] and twin.node("n0").labels[MIG_CONFIG_LABEL] == BALANCED
    assert not twin.node("n0").unschedulable
    assert any(e.reason == "MigPlanned" for e in twin.events)


def test_a_blocking_pdb_abandons_the_change_and_uncordons() -> None:
    twin = cluster(holders={(0, 0): "low/a", (0, 1): "low/b"})
    twin.add_pdb("keep-a", ["low/a", "low/b"], min_available=2)
    twin.add_pod("high/big", {"nvidia.com/mig-7g.40gb": 1}, priority=100)
    controller = mig_controller(twin, settings(eviction_timeout_s=120, eviction_backoff_s=5))
    run(twin, lambda: controller, 300)
    assert twin.node("n0").annotations[PHASE] == Phase.ABANDONED
    assert all(e.outcome is EvictionOutcome.BLOCKED for e in twin.evictions) and len(twin.evictions) >= 2
    assert twin.node("n0").labels[MIG_CONFIG_LABEL] == BALANCED
    converged(twin)


def test_stuck_pending_fails_after_the_deadline_and_uncordons() -> None:
    twin = cluster()
    twin.stuck_pending.add("n0")
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1})
    controller = mig_controller(twin, settings(apply_timeout_s=200))
    run(twin, lambda: controller, 450)
    assert twin.node("n0").annotations[PHASE] == Phase.FAILED
    assert twin.node("n0").labels[MIG_STATE_LABEL] == "pending"
    assert [e.reason for e in twin.events].count("MigNodeQuarantined") == 1  # not planned again for a while
    converged(twin)
    run(twin, lambda: controller, 300)  # the quarantine (300 s after a first failure) ends: it is tried again
    assert twin.node("n0").annotations[PHASE] != Phase.FAILED


def test_mig_manager_failure_is_retried_by_relabelling() -> None:
    """A broken ConfigMap makes the run fail; once fixed, the remove-and-set retry succeeds (spec §1.2)."""
    twin = cluster()
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1})
    controller = mig_controller(twin, settings(max_retries=3))
    good: str | None = None
    for _ in range(200):
        controller.tick()
        if good is None and twin.node("n0").annotations.get(PHASE) == Phase.APPLYING:
            good = twin.read_mig_config()
            twin.write_mig_config("version: v1\nmig-configs: {}\n")  # someone breaks the ConfigMap
        if good is not None and twin.node("n0").labels.get(MIG_STATE_LABEL) == "failed":
            twin.write_mig_config(good)
        twin.advance(5)
    assert "failed" in twin.state_history("n0")
    assert any(e.reason == "MigReconfigurationRetry" for e in twin.events)
    assert twin.node("n0").annotations[PHASE] == Phase.DONE
    assert twin.pod("team/big").phase == PodPhase.RUNNING
    converged(twin)


def test_a_controller_restarted_at_every_step_converges_without_double_evictions() -> None:
    twin = cluster(gpus=2, holders={(0, 0): "low/a", (0, 1): "low/b"})
    twin.add_pod("high/big", {"nvidia.com/mig-7g.40gb": 1}, priority=100)
    plans = run(twin, lambda: mig_controller(twin, settings()), 900)
    evicted = [e.pod for e in twin.evictions if e.outcome is EvictionOutcome.EVICTED]
    assert len(evicted) == len(set(evicted)) == 1
    assert set(evicted) <= {pod for plan in plans for pod in plan.evictions}
    assert twin.pod("high/big").phase == PodPhase.RUNNING
    converged(twin)


def test_a_node_mid_change_is_frozen_out_and_the_rest_keeps_planning() -> None:
    """No global barrier: while n0 is rebuilt for team/one, a second pod is planned on n1 at once, and no plan
    touches n0 or plans team/one a second time."""
    twin = cluster(nodes=2)
    twin.add_pod("team/one", {"nvidia.com/mig-7g.40gb": 1})
    controller = mig_controller(twin, settings())
    first = controller.tick()
    assert first is not None and {g.node for g in first.gpus if g.reconfigure} == {"n0"}
    twin.add_pod("team/two", {"nvidia.com/mig-7g.40gb": 1})
    later = []
    while any(r.phase in ACTIVE for r in load_records(twin).values()):
        twin.advance(5)
        if (plan := controller.tick()) is not None:
            later.append(plan)
    assert later, "the second pod waited for the first change to finish"
    assert all(g.node != "n0" for plan in later for g in plan.gpus)
    assert all(p.pod != "team/one" for plan in later for p in plan.placements)
    run(twin, lambda: controller, 900)
    assert {twin.pod(p).node for p in ("team/one", "team/two")} == {"n0", "n1"}
    assert twin.pod("team/two").phase == PodPhase.RUNNING
    converged(twin)


def test_a_pod_ignoring_eviction_is_asked_once_and_waited_for() -> None:
    twin = Twin.from_snapshot(cluster().snapshot(), CONFIG, grace_period_s=120)
    twin.add_pod("low/stubborn", {"nvidia.com/mig-3g.20gb": 1}, ignores_eviction=True, owned=False)
    twin.add_pod("low/other", {"nvidia.com/mig-3g.20gb": 1}, owned=False)
    twin.advance(5)
    twin.add_pod("high/big", {"nvidia.com/mig-7g.40gb": 1}, priority=100)
    run(twin, lambda: mig_controller(twin, settings()), 900)
    asked = [e.pod for e in twin.evictions]
    assert len(asked) == 1  # one pod had to go, asked once, even while it lingered through its grace period
    assert twin.pod("high/big").phase == PodPhase.RUNNING
    converged(twin)


def test_a_new_config_entry_is_not_named_by_a_label_before_it_can_reach_mig_manager() -> None:
    """mig-manager reads the ConfigMap through a volume kubelet refreshes late (spec §1.7): the label waits."""
    twin = cluster()
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1}, priority=10)
    controller = mig_controller(twin, settings(config_propagation_s=120))
    run(twin, lambda: controller, 60)
    node = twin.node("n0")
    assert node.annotations[PHASE] == Phase.LABELLING  # drained (nothing to evict), waiting for the volume
    assert node.labels[MIG_CONFIG_LABEL] == BALANCED
    run(twin, lambda: mig_controller(twin, settings(config_propagation_s=120)), 600)  # restarts keep the wait
    labelled_at = next(c.time for c in twin.label_log if c.key == MIG_CONFIG_LABEL and c.node == "n0")
    assert labelled_at >= 120
    assert twin.pod("team/big").phase == PodPhase.RUNNING
    converged(twin)


def _late_volume_cluster() -> Twin:
    """As `cluster()`, but mig-manager sees a ConfigMap write only 60 s later (kubelet's volume refresh)."""
    snapshot = cluster().snapshot()
    return Twin.from_snapshot(snapshot, CONFIG, timings=MigManagerTimings(config_refresh_s=60))


def test_labelling_before_the_volume_refresh_fails_and_waiting_for_it_does_not() -> None:
    hasty = _late_volume_cluster()
    hasty.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1}, priority=10)
    run(hasty, lambda: mig_controller(hasty, settings(config_propagation_s=0)), 300)
    assert any("selected mig-config not present" in run.message for run in hasty.mig_runs)
    patient = _late_volume_cluster()
    patient.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1}, priority=10)
    controller = mig_controller(patient, settings(config_propagation_s=90))
    run(patient, lambda: controller, 600)
    assert [run.outcome for run in patient.mig_runs] == ["success"]
    assert patient.pod("team/big").phase == PodPhase.RUNNING
    converged(patient)


def test_rewriting_a_broken_configmap_keeps_the_standard_names_nodes_are_labelled_with() -> None:
    """n1 stays at all-balanced; if its mig-manager restarts, the name must still be in the file."""
    twin = cluster(nodes=2)
    twin.write_mig_config("version: v1\nmig-configs: [not, a, map")
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1}, priority=10)
    controller = mig_controller(twin, settings(config_propagation_s=0))
    run(twin, lambda: controller, 600)
    assert twin.pod("team/big").phase == PodPhase.RUNNING
    text = twin.read_mig_config()
    assert text is not None
    config = parse_config(text)
    labelled = {node.labels[MIG_CONFIG_LABEL] for node in twin.nodes.values()}
    assert BALANCED in labelled and labelled <= set(config.mig_configs)
    twin.restart_mig_manager("n1")
    twin.advance(300)
    assert twin.node("n1").labels[MIG_STATE_LABEL] == "success"
    converged(twin)


def test_a_quarantined_nodes_config_entry_outlives_other_nodes_changes() -> None:
    """A node held out of planning (here quarantined after a run that never finished) keeps the config entry its
    label names when another node's change rewrites the ConfigMap: mig-manager there may read it again at any
    time, and an entry gone under a label is a failed run."""
    twin = cluster(nodes=2)
    twin.stuck_pending.add("n0")
    twin.add_pod("team/first", {"nvidia.com/mig-7g.40gb": 1}, node_selector={"kubernetes.io/hostname": "n0"})
    controller = mig_controller(twin, settings(apply_timeout_s=200))
    run(twin, lambda: controller, 310)
    assert twin.node("n0").annotations[PHASE] == Phase.FAILED  # quarantined, still labelled with its target
    held_label = twin.node("n0").labels[MIG_CONFIG_LABEL]
    assert held_label.startswith("migopt-")
    twin.add_pod("team/second", {"nvidia.com/mig-4g.20gb": 2})  # a map of its own for n1
    run(twin, lambda: controller, 150)
    n1_label = twin.node("n1").labels[MIG_CONFIG_LABEL]
    assert n1_label.startswith("migopt-") and n1_label != held_label  # the ConfigMap was rewritten for n1
    assert held_label in parse_config(twin.read_mig_config()).mig_configs
