"""What a simulated tick keeps between passes to skip work must never change an answer: a layout stamp stands
exactly while the layout mark does, the twin's snapshot and the sampler follow edits made in place, and the
controller's and actuator's memos give what working it out afresh gives."""

from __future__ import annotations

import gc
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvidia_protocol.labels import DEPLOY_LABELS, MIG_CONFIG_LABEL, MIG_STATE_LABEL, PAUSED
from optimizer.actuators.node_record import ChangeRecord
from optimizer.actuators.wedges import WedgeWatch
from optimizer.controller.actuator import ActuationSettings, Phase
from optimizer.controller.port import ClusterPort
from optimizer.controller.reconcile import _LayoutMemo, _node_layouts
from simulations.engine import GC_THRESHOLDS, Sampler, initial_cluster, node_slices, run_policy
from simulations.scenario import default_scenario
from simulations.twin import Twin
from simulations.twin.convert import to_snapshot
from simulations.twin.state import TwinGpu, TwinInstance, TwinNode
from solver.snapshot import ClusterSnapshot, GpuState, InstanceState, NodeState, parse_snapshot
from tests.twin_fixtures import CONFIG, T

ONES = [("1g.5gb", s) for s in range(7)]


def gpu(index: int, *profiles: tuple[str, int]) -> dict[str, Any]:
    return {"index": index, "model": "A100-40GB", "instances": [{"profile": p, "start": s} for p, s in profiles]}


def cluster() -> Twin:
    nodes = [
        {"name": "a", "labels": {MIG_CONFIG_LABEL: "all-1g"}, "gpus": [gpu(0, *ONES), gpu(1, *ONES)]},
        {"name": "b", "labels": {MIG_CONFIG_LABEL: "all-3g"}, "gpus": [gpu(0, ("3g.20gb", 0), ("3g.20gb", 4))]},
    ]
    return Twin.from_snapshot(parse_snapshot({"nodes": nodes}), CONFIG, timings=T)


# ---- edits made in place, as tests and fault knobs make them --------------------------------------------------

_EDIT = st.one_of(
    st.tuples(st.just("holder"), st.integers(0, 1), st.integers(0, 6)),  # an instance's pod assigned
    st.tuples(st.just("pop"), st.integers(0, 1)),  # an instance list shortened in place
    st.tuples(st.just("put-back"), st.integers(0, 1)),  # and lengthened again
    st.tuples(st.just("assign"), st.integers(0, 1)),  # an instance list replaced
    st.tuples(st.just("same-list"), st.integers(0, 1)),  # the same list assigned again
    st.tuples(st.just("new-gpu"), st.integers(0, 1)),  # a GPU replaced in the node's list, in place
    st.tuples(st.just("swap")),  # the GPUs reordered in place
    st.tuples(st.just("mode"), st.integers(0, 1)),  # a GPU's field assigned
    st.tuples(st.just("nothing")),
)


class _Edits:
    """Applies `_EDIT` steps to one node, keeping what was popped to put it back (layouts stay valid)."""

    def __init__(self, node: TwinNode) -> None:
        self.node = node
        self.popped: dict[int, list[TwinInstance]] = {}

    def apply(self, step: tuple[Any, ...]) -> None:
        kind, gpus = step[0], self.node.gpus
        target = gpus[step[1] % len(gpus)] if len(step) > 1 else gpus[0]
        if kind == "holder" and target.instances:
            instance = target.instances[step[2] % len(target.instances)]
            instance.pod = None if instance.pod else "host/process"
        elif kind == "pop" and target.instances:
            self.popped.setdefault(id(target), []).append(target.instances.pop())
        elif kind == "put-back" and self.popped.get(id(target)):
            target.instances.append(self.popped[id(target)].pop())
        elif kind == "assign":
            target.instances = [TwinInstance(profile=i.profile, start=i.start) for i in target.instances]
        elif kind == "same-list":
            target.instances = target.instances
        elif kind == "new-gpu":
            gpus[step[1] % len(gpus)] = TwinGpu(
                index=target.index, model=target.model, instances=list(target.instances)
            )
        elif kind == "swap" and len(gpus) > 1:
            gpus[0], gpus[1] = gpus[1], gpus[0]
        elif kind == "mode":
            target.mig_enabled = not target.mig_enabled


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_EDIT, min_size=1, max_size=30))
def test_a_stamp_stands_exactly_while_the_layout_mark_stands(steps: list[tuple[Any, ...]]) -> None:
    node = cluster().node("a")
    edits = _Edits(node)
    stamp = node.layout_stamp()
    mark = node.layout_mark()
    for step in steps:
        edits.apply(step)
        assert stamp.stands(node) == (node.layout_mark() == mark)
        if not stamp.stands(node):
            stamp, mark = node.layout_stamp(), node.layout_mark()


def fresh(twin: Twin) -> ClusterSnapshot:
    return to_snapshot(twin.nodes, {name: twin._operands[name].plugin for name in twin.nodes}, twin._pods)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_EDIT, st.tuples(st.just("label"), st.sampled_from(["x", "y"]))), min_size=1, max_size=25))
def test_snapshots_and_samples_follow_edits_made_in_place(steps: list[tuple[Any, ...]]) -> None:
    twin = cluster()
    sampler = Sampler(twin)
    edits = _Edits(twin.node("a"))
    for step in [("nothing",), *steps]:
        if step[0] == "label":
            twin.node("a").labels[MIG_STATE_LABEL] = step[1]
        else:
            edits.apply(step)
        read, scratch = twin.snapshot(), fresh(twin)
        assert read == scratch and read.model_dump_json() == scratch.model_dump_json()
        sample = sampler.sample()
        slices = [node_slices(n) for n in twin.nodes.values()]
        assert (sample.allocated_slices, sample.total_slices) == tuple(map(sum, zip(*slices, strict=True)))


# ---- the controller's layouts and the actuator's memos ---------------------------------------------------------


def state(name: str, holders: tuple[str | None, ...]) -> NodeState:
    instances = [InstanceState(profile="1g.5gb", start=s, pod=p) for s, p in enumerate(holders)]
    return NodeState(name=name, gpus=[GpuState(index=0, model="A100-40GB", instances=instances)])


NODE_STATES = st.builds(
    state, st.sampled_from(["n1", "n2", "n3"]), st.lists(st.sampled_from([None, "p/a", "p/b"]), max_size=3).map(tuple)
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(NODE_STATES, max_size=3, unique_by=lambda n: n.name), min_size=1, max_size=6), st.data())
def test_layouts_remembered_per_node_are_the_layouts_worked_out_afresh(
    passes: list[list[NodeState]], data: st.DataObject
) -> None:
    memo = _LayoutMemo()
    kept: dict[str, NodeState] = {}
    for nodes in passes:
        # some nodes come back as the very object of the last pass (unchanged), others as new objects
        nodes = [kept[n.name] if n.name in kept and data.draw(st.booleans()) else n for n in nodes]
        kept = {n.name: n for n in nodes}
        snapshot = ClusterSnapshot(nodes=nodes)
        expected = tuple(pair for n in sorted(nodes, key=lambda n: n.name) for pair in _node_layouts(n))
        assert memo(snapshot) == expected


def labelled(name: str, state_label: str | None, paused: bool, config: str = "c1") -> NodeState:
    labels = {MIG_CONFIG_LABEL: config} | ({MIG_STATE_LABEL: state_label} if state_label else {})
    labels |= {label: PAUSED if paused else "true" for label in DEPLOY_LABELS}
    return NodeState(name=name, labels=labels)


NODE_LABELS = st.builds(
    labelled,
    st.sampled_from(["n1", "n2"]),
    st.sampled_from([None, "pending", "success", "failed"]),
    st.booleans(),
    st.sampled_from(["c1", "c2"]),
)


class _Events:
    """Just enough of a port for `WedgeWatch.report`: the events, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []

    def record_event(self, kind: str, name: str, reason: str, message: str) -> None:
        self.events.append((kind, name, reason, message))


class _Unremembering(WedgeWatch):
    """The watch as it was before it skipped quiet nodes: every node looked at every pass."""

    def _remember_quiet(self, node: NodeState, wedge: object) -> None:
        return None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(NODE_LABELS, max_size=2, unique_by=lambda n: n.name), st.booleans()), max_size=10))
def test_skipping_quiet_nodes_finds_and_reports_the_same_wedges(passes: list[tuple[list[NodeState], bool]]) -> None:
    settings_ = ActuationSettings(pending_timeout_s=100.0)
    watch, plain = WedgeWatch(settings_), _Unremembering(settings_)
    record = ChangeRecord(plan_id="p1", phase=Phase.APPLYING, target="c1", evict={}, expected={}, deadline=1e9,
                          labelled=True, labelled_at=0.0)  # fmt: skip
    kept: dict[str, NodeState] = {}
    ports = _Events(), _Events()
    for step, (nodes, same) in enumerate(passes):
        nodes = [kept[n.name] if same and n.name in kept else n for n in nodes]
        kept = {n.name: n for n in nodes}
        snapshot = ClusterSnapshot(nodes=nodes)
        records = {"n1": record}
        now = 60.0 * step
        found = watch.wedges(snapshot, records, now)
        assert found == plain.wedges(snapshot, records, now)
        for wedge, _ in found:
            watch.report(cast(ClusterPort, ports[0]), wedge, "reported")
            plain.report(cast(ClusterPort, ports[1]), wedge, "reported")
        assert (watch._pending_seen, watch._reported) == (plain._pending_seen, plain._reported)
    assert ports[0].events == ports[1].events


def test_a_policy_run_leaves_the_collector_as_it_found_it() -> None:
    before = gc.get_threshold()
    base = default_scenario()
    scenario = base.model_copy(update={"horizon_s": 60.0, "cluster": base.cluster.model_copy(update={"nodes": 2})})
    run_policy(scenario, "static:all-balanced", [])
    assert gc.get_threshold() == before != GC_THRESHOLDS
    assert initial_cluster(scenario, "all-balanced")[0].nodes  # the scenario itself was usable
