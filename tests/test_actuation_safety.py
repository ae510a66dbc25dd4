"""The safety cases of node changes: evictions asked again after a failed request or a crash (never twice once
accepted), mig-manager states that belong to an earlier run, and a leader deposed in the middle of a pass."""

from __future__ import annotations

import contextlib
from dataclasses import replace

from nvidia_protocol.labels import MIG_CONFIG_LABEL, MIG_STATE_LABEL
from optimizer.actuators.mig_manager import MigManagerActuator
from optimizer.actuators.node_record import PHASE, load_records
from optimizer.controller.actuator import ACTIVE, Phase
from optimizer.controller.port import EvictionOutcome
from optimizer.controller.reconcile import Controller
from simulations.twin import PodPhase, Twin
from solver.snapshot import ClusterSnapshot, InstanceState
from tests.controller_fixtures import mig_controller
from tests.test_controller import cluster, converged, run, settings


class FailingEvictions:
    """The twin, with its first `failures` eviction requests failing as a 500 after retries would."""

    def __init__(self, twin: Twin, failures: int) -> None:
        self.twin, self.failures, self.requests = twin, failures, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.twin, name)

    def evict(self, pod: str, uid: str | None = None) -> EvictionOutcome:
        self.requests += 1
        if self.requests <= self.failures:
            raise RuntimeError("500 InternalError: pods/eviction")
        return self.twin.evict(pod, uid)


def _busy() -> Twin:
    twin = cluster(holders={(0, 0): "low/a", (0, 1): "low/b"})
    twin.add_pod("high/big", {"nvidia.com/mig-7g.40gb": 1}, priority=100)
    return twin


def test_failed_eviction_requests_are_asked_again_with_backoff_long_before_the_deadline() -> None:
    twin = _busy()
    port = FailingEvictions(twin, failures=3)
    controller = Controller(
        port,  # type: ignore[arg-type]
        settings(eviction_timeout_s=600, eviction_backoff_s=5),
        actuator=MigManagerActuator(settings(eviction_timeout_s=600, eviction_backoff_s=5).actuation),
    )
    for _ in range(60):
        with contextlib.suppress(RuntimeError):  # the runner logs and counts a failed pass; the next starts afresh
            controller.tick()
        twin.advance(5)
    assert port.requests > 3
    assert twin.node("n0").annotations[PHASE] == Phase.DONE  # well within the 600 s eviction deadline
    assert twin.pod("high/big").phase == PodPhase.RUNNING
    accepted = [e.pod for e in twin.evictions if e.outcome is EvictionOutcome.EVICTED]
    assert len(accepted) == len(set(accepted))  # asked again only until accepted: never evicted twice
    converged(twin)


def test_a_crash_between_marking_and_asking_asks_again() -> None:
    twin = _busy()
    first = mig_controller(twin, settings())
    first.tick()  # plan + record
    twin.advance(5)
    first.tick()  # cordon
    record = load_records(twin)["n0"]
    assert record.phase is Phase.EVICTING
    marked = record.model_copy(update={"asked": sorted(record.evict)})  # marked, then killed before the request
    twin.write_record("n0", marked.model_dump_json())
    run(twin, lambda: mig_controller(twin, settings()), 600)  # a fresh controller every tick: restarts
    assert twin.node("n0").annotations[PHASE] == Phase.DONE
    assert sorted(e.pod for e in twin.evictions) == sorted(record.evict)
    converged(twin)


def test_a_state_left_by_an_earlier_run_is_not_this_changes_result() -> None:
    """A `failed` from an earlier run must neither count as a failed run nor trigger the relabel retry."""
    twin = _busy()
    twin.node("n0").labels[MIG_STATE_LABEL] = "failed"
    controller = mig_controller(twin, settings(max_retries=0))
    run(twin, lambda: controller, 900)
    assert twin.node("n0").annotations[PHASE] == Phase.DONE
    assert not any(e.reason == "MigReconfigurationRetry" for e in twin.events)
    assert load_records(twin)["n0"].failed_runs == 0
    assert twin.node("n0").labels[MIG_STATE_LABEL] == "success"
    converged(twin)


def test_retries_count_mig_manager_runs_not_label_reads() -> None:
    twin = _busy()
    controller = mig_controller(twin, settings(max_retries=1))
    broken = False
    for _ in range(300):
        controller.tick()
        record = load_records(twin).get("n0")
        if not broken and record is not None and record.phase is Phase.APPLYING:
            twin.write_mig_config("version: v1\nmig-configs: {}\n")  # every run fails from now on
            broken = True
        twin.advance(5)
        if record is not None and record.phase not in ACTIVE:
            break
    record = load_records(twin)["n0"]
    runs = sum(1 for r in twin.mig_runs if r.node == "n0" and r.outcome == "failed")
    assert record.phase is Phase.FAILED and record.failed_runs == 2 == runs  # the first run, then one retry


def test_a_deposed_leader_stops_between_two_evictions() -> None:
    twin = _busy()
    leading = [True]
    controller = mig_controller(twin, settings(), may_act=lambda: leading[0])
    real_evict = twin.evict

    def evict_then_lose_the_lease(pod: str, uid: str | None = None) -> EvictionOutcome:
        outcome = real_evict(pod, uid)
        leading[0] = False  # the lease expires while this request is in flight
        return outcome

    twin.evict = evict_then_lose_the_lease  # type: ignore[method-assign]
    for _ in range(10):
        controller.tick()
        twin.advance(5)
    assert len(twin.evictions) == 1  # the second planned pod was not asked for
    assert twin.node("n0").labels[MIG_CONFIG_LABEL] != load_records(twin)["n0"].target


class LyingLayout:
    """The twin, except that node n0's GPU 0 is reported as one free 7g.40gb instance (it is all-balanced)."""

    def __init__(self, twin: Twin) -> None:
        self.twin = twin

    def __getattr__(self, name: str) -> object:
        return getattr(self.twin, name)

    def snapshot(self) -> ClusterSnapshot:
        truth = self.twin.snapshot()
        nodes = []
        for node in truth.nodes:
            if node.name == "n0":
                lie = node.gpus[0].model_copy(update={"instances": [InstanceState(profile="7g.40gb", start=0)]})
                node = node.model_copy(update={"gpus": [lie, *node.gpus[1:]]})
            nodes.append(node)
        return truth.model_copy(update={"nodes": nodes})


def test_capacity_that_never_binds_makes_its_node_suspect_and_its_pod_is_planned_elsewhere() -> None:
    twin = cluster(nodes=2)
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1})
    port = LyingLayout(twin)
    controller = Controller(
        port,  # type: ignore[arg-type]
        settings(),
        actuator=MigManagerActuator(settings().actuation),
    )
    first = controller.tick()
    assert first is not None and first.placements[0].node == "n0" and not any(g.reconfigure for g in first.gpus)
    run(twin, lambda: controller, 900)
    assert [e.reason for e in twin.events].count("MigNodeSuspect") == 1
    assert twin.pod("team/big").phase == PodPhase.RUNNING and twin.pod("team/big").node == "n1"


class Intruder:
    """The twin, with a pod the plan never saw reported on node n0's GPU 0 once `arrived` is set."""

    def __init__(self, twin: Twin) -> None:
        self.twin, self.arrived = twin, False

    def __getattr__(self, name: str) -> object:
        return getattr(self.twin, name)

    def snapshot(self) -> ClusterSnapshot:
        truth = self.twin.snapshot()
        if not self.arrived:
            return truth
        nodes = []
        for node in truth.nodes:
            if node.name == "n0":
                gpu = node.gpus[0]
                free = next(i for i, inst in enumerate(gpu.instances) if inst.pod is None)
                instances = list(gpu.instances)
                instances[free] = replace(instances[free], pod="late/intruder")
                node = node.model_copy(
                    update={"gpus": [gpu.model_copy(update={"instances": instances}), *node.gpus[1:]]}
                )
            nodes.append(node)
        return truth.model_copy(update={"nodes": nodes})


def test_a_pod_bound_after_the_plan_on_a_changing_gpu_is_not_evicted_and_the_change_is_given_up() -> None:
    twin = _busy()
    port = Intruder(twin)
    controller = Controller(port, settings(), actuator=MigManagerActuator(settings().actuation))  # type: ignore[arg-type]
    controller.tick()
    record = load_records(twin)["n0"]
    assert record.phase is Phase.EVICTING and twin.node("n0").unschedulable  # cordoned as the change starts
    port.arrived = True
    controller.tick()
    assert load_records(twin)["n0"].phase is Phase.ABANDONED
    assert "late/intruder" not in {e.pod for e in twin.evictions}
    assert not twin.node("n0").unschedulable


def test_a_new_change_to_the_label_a_hung_run_left_starts_mig_manager_again() -> None:
    """After a run hung in `pending` (the change failed, the node was quarantined), the next change may pick the
    same config: the label already names it, so it is removed and set again, or mig-manager would never run."""
    twin = cluster()
    twin.stuck_pending.add("n0")
    twin.add_pod("team/big", {"nvidia.com/mig-7g.40gb": 1})
    controller = mig_controller(twin, settings(apply_timeout_s=200))
    run(twin, lambda: controller, 450)
    assert load_records(twin)["n0"].phase is Phase.FAILED
    target = load_records(twin)["n0"].target
    twin.stuck_pending.clear()  # the operand pod has gone; mig-manager gave up its run at 5 minutes and waits
    run(twin, lambda: controller, 200)  # the quarantine ends; the next change picks the same config
    assert load_records(twin)["n0"].plan_id != "plan-1"
    changes = [(c.key, c.new) for c in twin.label_log if c.node == "n0" and c.time > 450]
    assert changes[:3] == [(MIG_CONFIG_LABEL, None), (MIG_STATE_LABEL, None), (MIG_CONFIG_LABEL, target)]
    run(twin, lambda: controller, 300)
    assert load_records(twin)["n0"].phase is Phase.DONE and twin.pod("team/big").phase == PodPhase.RUNNING
