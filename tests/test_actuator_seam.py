"""The Actuator seam: the reconcile loop and the metrics see node changes only as `ActuationStatus` values, so
any actuator can carry a plan out; the mig-manager actuator reads its own record defensively."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from optimizer.actuators.mig_manager import ATTEMPTS, EVICT, PHASE, PLAN, TARGET, MigManagerActuator, recorded_status
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
        self.statuses: dict[str, ActuationStatus] = {}

    def status(self, node: NodeState) -> ActuationStatus | None:
        return self.statuses.get(node.name)

    def target(self, snapshot: ClusterSnapshot, change: NodeChange) -> str:
        return f"target-of-{change.node}"

    def start(
        self, port: ClusterPort, snapshot: ClusterSnapshot, changes: Sequence[NodeChange], may_act: Callable[[], bool]
    ) -> None:
        self.started += changes
        for change in changes:
            self.statuses[change.node] = ActuationStatus(
                node=change.node, plan_id=change.plan_id, phase=Phase.EVICTING, target="t", evict=tuple(change.evict)
            )

    def advance(self, port: ClusterPort, node: NodeState) -> Phase | None:
        self.advanced.append(node.name)
        return self.statuses[node.name].phase


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


def test_an_active_status_is_the_plan_barrier_and_is_advanced_every_tick() -> None:
    twin = _busy_twin()
    actuator = RecordingActuator()
    controller = Controller(twin, _enforce(), actuator=actuator)
    assert controller.tick() is not None
    twin.add_pod("high/other", {"nvidia.com/mig-7g.40gb": 1}, priority=100)
    for _ in range(3):
        assert controller.tick() is None  # a node is mid-change: no new plan
    assert actuator.advanced == ["n0"] * 3
    actuator.statuses["n0"] = actuator.statuses["n0"].model_copy(update={"phase": Phase.DONE})
    assert controller.tick() is not None  # the change ended: planning resumes


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
    def node(annotations: dict[str, str]) -> NodeState:
        return NodeState(name="n", annotations=annotations)

    assert recorded_status(node({})) is None
    assert recorded_status(node({PHASE: "exploding"})) is None  # an unknown phase is no change of ours
    status = recorded_status(node({PHASE: "applying", PLAN: "plan-3", TARGET: "cfg", EVICT: "a/b,,c/d", ATTEMPTS: "x"}))
    assert status is not None and status.active and status.phase is Phase.APPLYING
    assert status.evict == ("a/b", "c/d") and status.attempts == 0 and status.target == "cfg"
    assert MigManagerActuator().status(node({PHASE: "done"})) == ActuationStatus(
        node="n", plan_id="", phase=Phase.DONE, target=""
    )
