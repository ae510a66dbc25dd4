"""The twin's snapshot reuses per-node pieces between reads; whatever changed in between, through the twin's
calls or by editing its objects directly, a read must equal one made from scratch, down to key order."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvidia_protocol.labels import MIG_CONFIG_LABEL
from simulations.twin import Twin
from simulations.twin.convert import to_snapshot
from simulations.twin.state import PodPhase, TwinInstance, TwinPod
from solver.protection import Protection
from solver.snapshot import ClusterSnapshot, RunningPod, Taint, parse_snapshot
from tests.twin_fixtures import CONFIG, T

ONE_G = "nvidia.com/mig-1g.5gb"
THREE_G = "nvidia.com/mig-3g.20gb"


def gpu(index: int, *profiles: tuple[str, int]) -> dict[str, Any]:
    return {"index": index, "model": "A100-40GB", "instances": [{"profile": p, "start": s} for p, s in profiles]}


def cluster() -> Twin:
    ones = [("1g.5gb", s) for s in range(7)]
    nodes = [
        {"name": "a", "labels": {MIG_CONFIG_LABEL: "all-1g"}, "gpus": [gpu(0, *ones), gpu(1, *ones)]},
        {"name": "b", "labels": {MIG_CONFIG_LABEL: "all-3g"}, "gpus": [gpu(0, ("3g.20gb", 0), ("3g.20gb", 4))]},
    ]
    return Twin.from_snapshot(parse_snapshot({"nodes": nodes}), CONFIG, timings=T)


def fresh(twin: Twin) -> ClusterSnapshot:
    """The snapshot made with no cache at all (the twin's parts, as `Twin.snapshot` passes them)."""
    plugins = {name: twin._operands[name].plugin for name in twin.nodes}
    return to_snapshot(twin.nodes, plugins, twin._pods)


def running_from_scratch(twin: Twin) -> list[RunningPod]:
    """What the pod store's kept list of running pods must equal: every running pod holding devices, by name."""
    holding = [p for p in twin.pods.values() if p.active and p.phase == PodPhase.RUNNING and p.devices]
    running = sorted(holding, key=lambda p: p.name)
    return [RunningPod(name=p.name, priority=p.spec.priority, protection=reason(p)) for p in running]


def reason(pod: TwinPod) -> Protection | None:
    """The snapshot's reason for a pod not to be evicted: the spec's, `unspecified` when it gives none."""
    return None if pod.spec.evictable else pod.spec.protection or Protection.UNSPECIFIED


def assert_as_fresh(twin: Twin) -> None:
    read, scratch = twin.snapshot(), fresh(twin)
    assert read == scratch
    assert read.running == running_from_scratch(twin)
    assert read.model_dump_json() == scratch.model_dump_json()  # same order of labels, allocatable, pods
    assert parse_snapshot(read.model_dump(by_alias=True)) == read  # and what validating it whole would give


_STEP = st.one_of(
    st.tuples(st.just("pod"), st.sampled_from([ONE_G, THREE_G]), st.integers(1, 3), st.sampled_from([None, 50.0])),
    st.tuples(st.just("advance"), st.sampled_from([1.0, 20.0, 60.0])),
    st.tuples(st.just("evict"), st.integers(0, 20)),
    st.tuples(st.just("label"), st.sampled_from(["a", "b"]), st.sampled_from(["x", "y", None])),
    st.tuples(st.just("config"), st.sampled_from(["a", "b"]), st.sampled_from(["all-1g", "all-3g", "all-2g"])),
    st.tuples(st.just("cordon"), st.sampled_from(["a", "b"]), st.booleans()),
    st.tuples(st.just("taint"), st.sampled_from(["a", "b"]), st.booleans()),
    st.tuples(st.just("edit-holder"), st.sampled_from(["a", "b"]), st.integers(0, 6)),
    st.tuples(st.just("edit-label"), st.sampled_from(["a", "b"]), st.sampled_from(["p", "q"])),
    st.tuples(st.just("edit-layout"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("edit-spec"), st.integers(0, 20), st.sampled_from([None, Protection.OPTED_OUT])),
    st.tuples(st.just("edit-devices"), st.integers(0, 20)),
)


def some_running(twin: Twin, index: int) -> TwinPod | None:
    running = sorted((p for p in twin.pods.values() if p.active and p.phase == PodPhase.RUNNING), key=lambda p: p.name)
    return running[index % len(running)] if running else None


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_STEP, min_size=5, max_size=25))
def test_every_read_equals_a_read_from_scratch(steps: list[tuple[Any, ...]]) -> None:
    twin = cluster()
    assert_as_fresh(twin)
    for n, step in enumerate(steps):
        kind = step[0]
        if kind == "pod":
            twin.add_pod(f"ns/p{n}", {step[1]: step[2]}, duration_s=step[3])
        elif kind == "advance":
            twin.advance(step[1])
        elif kind == "evict":
            running = sorted(p.name for p in twin.snapshot().running)
            if running:
                twin.evict(running[step[1] % len(running)])
        elif kind == "label":
            twin.patch_node(step[1], labels={"team": step[2]})
        elif kind == "config":
            twin.patch_node(step[1], labels={MIG_CONFIG_LABEL: step[2]})
        elif kind == "cordon":
            twin.set_unschedulable(step[1], step[2])
        elif kind == "taint":
            twin.set_taints(step[1], [Taint(key="dedicated")] if step[2] else [])
        elif kind == "edit-holder":  # out of band, as tests and the facade's fault knobs do
            instances = twin.node(step[1]).gpus[0].instances
            if instances:
                target = instances[step[2] % len(instances)]
                target.pod = None if target.pod else "host/process"
        elif kind == "edit-label":
            twin.node(step[1]).labels["edited"] = step[2]
        elif kind == "edit-spec":  # as the API facade does when a pod's annotations change what may evict it
            pod = some_running(twin, step[1])
            if pod is not None:
                pod.spec = pod.spec.model_copy(update={"evictable": step[2] is None, "protection": step[2]})
        elif kind == "edit-devices":
            pod = some_running(twin, step[1])
            if pod is not None:
                pod.devices = []
        else:
            first = twin.node(step[1]).gpus[0]
            first.instances = [TwinInstance(profile="7g.40gb", start=0)] if first.instances else []
        assert_as_fresh(twin)
        if kind.startswith("edit"):
            twin.reschedule()  # what the twin asks after direct edits, for its scheduler (the snapshot needs none)
            assert_as_fresh(twin)


def test_an_instance_edited_in_place_after_a_read_shows_in_the_next() -> None:
    twin = cluster()
    before = twin.snapshot()
    twin.node("b").gpus[0].instances[1].pod = "host/process"
    after = twin.snapshot()
    assert after.nodes[1].gpus[0].instances[1].pod == "host/process"
    assert before.nodes[1].gpus[0].instances[1].pod is None  # a snapshot already read is never changed
    assert after.nodes[0] is before.nodes[0]  # the node nothing happened to is reused as it was


def test_a_running_pod_whose_spec_is_replaced_after_a_read_shows_in_the_next() -> None:
    twin = cluster()
    twin.add_pod("ns/p", {ONE_G: 1})
    before = twin.snapshot()
    assert [p.protection for p in before.running] == [None]
    pod = twin.pods["ns/p"]
    pod.spec = pod.spec.model_copy(update={"evictable": False, "protection": Protection.OPTED_OUT})
    assert [p.protection for p in twin.snapshot().running] == [Protection.OPTED_OUT]
    pod.devices = []  # holding nothing, it is not listed (the instance still names it)
    assert twin.snapshot().running == []
    assert [p.protection for p in before.running] == [None]  # a snapshot already read is never changed
