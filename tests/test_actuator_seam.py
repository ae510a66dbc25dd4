"""The Actuator seam: the reconcile loop and the metrics see node changes only as `ActuationStatus` values, so
any actuator can carry a plan out; the mig-manager actuator reads its own record defensively."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from optimizer.actuators.mig_manager import MigManagerActuator
from optimizer.actuators.node_record import PHASE, PLAN, ChangeRecord, parse_record
from optimizer.controller.actuator import ActuationStatus, NodeChange, Phase
from optimizer.controller.enactment import node_changes
from optimizer.controller.port import ClusterPort
from optimizer.controller.reconcile import Controller, ControllerSettings
from optimizer.metrics.exporter import MetricsObserver
from simulations.twin import Twin
from solver.snapshot import ClusterSnapshot, NodeState
from tests.test_controller import cluster


class RecordingActuator:
    """An actuator that acts on nothing: it records what it was asked and reports what the test sets."""

    def __init__(self) -> None:
        self.started: list[NodeChange] = []
        self.advanced: list[str] = []
        self.tended: list[bool] = []
        self.recorded: dict[str, ActuationStatus] = {}

    def statuses(self, port: ClusterPort, snapshot: ClusterSnapshot) -> dict[str, ActuationStatus]:
        return dict(self.recorded)

    def target(self, snapshot: ClusterSnapshot, change: NodeChange) -> str:
        return f"target-of-{change.node}"

    def start(
        self, port: ClusterPort, snapshot: ClusterSnapshot, changes: Sequence[NodeChange], may_act: Callable[[], bool]
    ) -> None:
        self.started += changes
        for change in changes:
            self.recorded[change.node] = ActuationStatus(
                node=change.node,
                plan_id=change.plan_id,
                phase=Phase.EVICTING,
                target="t",
                evict=tuple(change.evict),
                serves=tuple(change.serves),
            )

    def advance(self, port: ClusterPort, snapshot: ClusterSnapshot, node: NodeState) -> Phase | None:
        self.advanced.append(node.name)
        return self.recorded[node.name].phase

    def tend(self, port: ClusterPort, snapshot: ClusterSnapshot, may_repair: bool) -> None:
        self.tended.append(may_repair)


def _enforce() -> ControllerSettings:
    return ControllerSettings(mode="enforce", batch_idle_s=0, batch_timeout_s=0)


def _busy_twin() -> Twin:
    twin = cluster(gpus=2, holders={(0, 0): "low/a", (0, 1): "low/b"})
    twin.add_pod("high/big", {"nvidia.com/mig-7g.40gb": 1}, priority=100)
    return twin


def test_the_loop_hands_the_plans_changes_to_its_actuator_and_touches_nothing_itself() -> None:
    twin = _busy_twin()
    actuator = RecordingActuator()
    before = {n.name: (dict(n.labels), dict(n.annotations)) for n in twin.snapshot().nodes}
    plan = Controller(twin, _enforce(), actuator=actuator).tick()
    assert plan is not None and actuator.started
    assert {c.node for c in actuator.started} == {g.node for g in plan.gpus if g.reconfigure}
    assert sorted(p for c in actuator.started for p in c.evict) == sorted(plan.evictions)
    assert twin.evictions == [] and twin.read_mig_config() is not None  # the twin's own file, never rewritten
    assert {n.name: (dict(n.labels), dict(n.annotations)) for n in twin.snapshot().nodes} == before


def test_an_active_status_freezes_its_node_and_a_failed_one_quarantines_it() -> None:
    twin = _busy_twin()
    actuator = RecordingActuator()
    controller = Controller(twin, _enforce(), actuator=actuator)
    first = controller.tick()
    assert first is not None and actuator.recorded["n0"].serves == ("high/big",)
    twin.add_pod("high/other", {"nvidia.com/mig-7g.40gb": 1}, priority=100)
    plans = [controller.tick() for _ in range(3)]
    assert actuator.advanced == ["n0"] * 3
    made = [p for p in plans if p is not None]
    assert made and all(not p.gpus and "high/big" not in {u.pod for u in p.unplaced} for p in made)
    failed = actuator.recorded["n0"].model_copy(
        update={"phase": Phase.FAILED, "finished_at": twin.now(), "failures": 1}
    )
    actuator.recorded["n0"] = failed
    twin.add_pod("high/third", {"nvidia.com/mig-1g.5gb": 1}, priority=100)
    plan = controller.tick()
    assert plan is not None and not plan.gpus  # quarantined: still left alone, its pods unplaced elsewhere
    assert "high/big" in {u.pod for u in plan.unplaced}  # no longer spoken for: planned (here: nowhere to go)
    assert [e.reason for e in twin.events].count("MigNodeQuarantined") == 1


def test_metrics_show_the_actuators_statuses_and_its_targets() -> None:
    twin = _busy_twin()
    actuator, observer = RecordingActuator(), MetricsObserver()
    Controller(twin, _enforce(), actuator=actuator, observer=observer).tick()
    Controller(twin, _enforce(), actuator=actuator, observer=observer).tick()  # observes the recorded status
    text = observer.exposition().decode()
    assert 'migopt_node_actuation_phase{node="n0",phase="evicting"} 1.0' in text
    assert "migopt_nodes_actuating 1.0" in text
    assert 'migopt_node_config_info{config="target-of-n0",node="n0",state="planned"} 1.0' in text


def test_node_changes_list_every_gpu_of_a_changing_node_only() -> None:
    twin = _busy_twin()
    snapshot = twin.snapshot()
    plan = Controller(twin, ControllerSettings(batch_idle_s=0, batch_timeout_s=0), actuator=RecordingActuator()).tick()
    assert plan is not None
    changes = node_changes(snapshot, plan, "p")
    for change in changes:
        node = next(n for n in snapshot.nodes if n.name == change.node)
        assert [g.index for g in change.gpus] == sorted(g.index for g in node.gpus)
        assert any(g.reconfigure for g in change.gpus)


def test_the_mig_manager_record_is_read_defensively() -> None:
    assert parse_record("{not json") is None
    assert parse_record('{"plan_id": "p", "phase": "exploding"}') is None  # an unknown phase is no change of ours
    record = ChangeRecord(plan_id="plan-3", phase=Phase.APPLYING, target="cfg", evict={"a/b": "u1"}, expected={},
                          deadline=10.0)  # fmt: skip
    parsed = parse_record(record.model_dump_json())
    assert parsed == record and parsed.status("n").active and parsed.status("n").evict == ("a/b",)


def test_forged_annotations_are_ignored_reported_once_and_evict_nothing() -> None:
    """Issue case 1: annotations on a node claiming a change migopt never recorded are no instruction."""
    twin = cluster(gpus=2, holders={(0, 0): "low/a", (0, 1): "low/b"})  # no pending pods, no plan
    node = twin.node("n0")
    pods = sorted({pod for gpu in twin.snapshot().nodes[0].gpus for pod in gpu.holders})
    node.annotations.update(
        {PLAN: "forged", PHASE: "cordoning", "migopt.io/target-config": "all-disabled",
         "migopt.io/evict": ",".join(pods), "migopt.io/evicted": "", "migopt.io/attempts": "0",
         "migopt.io/expected-resources": "{}", "migopt.io/deadline": str(twin.now() + 600)}
    )  # fmt: skip
    controller = Controller(twin, _enforce(), actuator=MigManagerActuator())
    label = node.labels.get("nvidia.com/mig.config")
    for _ in range(5):
        controller.tick()
        twin.advance(5)
    assert twin.evictions == [] and twin.node("n0").labels.get("nvidia.com/mig.config") == label
    assert not twin.node("n0").unschedulable
    assert [e.reason for e in twin.events].count("MigAnnotationsIgnored") == 1
