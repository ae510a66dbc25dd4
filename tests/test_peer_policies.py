"""The peers (`simulations.peers`: nos, HAMi, the DRA driver) on small hand-made clusters: each one's rules as
spec dynamic-mig-peers §4 states them, and what they share (no evictions, NVML's rules on every layout)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.peers import dra, hami, nos
from simulations.peers.knobs import DraKnobs, HamiKnobs, NosKnobs
from simulations.peers.sizing import covers
from simulations.twin.cluster import Twin
from simulations.twin.state import SizedRequest, TwinPod
from simulations.workloads import sized_requests
from solver.catalog import load_catalog
from solver.geometry import Instance, check_layout
from solver.snapshot import STRATEGY_LABEL, ClusterSnapshot, GpuState, InstanceState, NodeState

A100_80 = load_catalog().model("A100-80GB")
A100_40 = load_catalog().model("A100-40GB")


def size(profile: str, model: str = "A100-80GB", count: int = 1) -> tuple[SizedRequest, ...]:
    return sized_requests({f"nvidia.com/mig-{profile}": count}, [load_catalog().model(model)])


def cluster(
    nodes: Mapping[str, int],
    model: str = "A100-80GB",
    instances: Mapping[tuple[str, int], list[InstanceState]] | None = None,
) -> Twin:
    """Nodes with that many GPUs each, empty unless `instances` names (node, GPU) layouts."""
    instances = instances or {}
    states = [
        NodeState(
            name=name,
            labels={STRATEGY_LABEL: "mixed"},
            gpus=[GpuState(index=g, model=model, instances=instances.get((name, g), [])) for g in range(count)],
        )
        for name, count in nodes.items()
    ]
    return Twin.from_snapshot(ClusterSnapshot(nodes=states))


def add(twin: Twin, name: str, profile: str, duration_s: float | None = None, model: str = "A100-80GB") -> TwinPod:
    return twin.add_pod(name, {f"nvidia.com/mig-{profile}": 1}, duration_s=duration_s, at_least=size(profile, model))


def arrive(twin: Twin, at: float, name: str, profile: str, **options: object) -> None:
    """A pod created at `at`, as a clock event (the engine's arrivals are; nos watches the clock's events)."""
    twin.clock.schedule(at, lambda: twin.add_pod(name, {f"nvidia.com/mig-{profile}": 1}, **options))  # type: ignore[arg-type]


def held(twin: Twin, node: str, gpu: int) -> set[tuple[str, int, str | None]]:
    return {(i.profile, i.start, i.pod) for i in twin.node(node).gpu(gpu).instances}


def valid(twin: Twin) -> None:
    """Every GPU's layout is one NVML could hold: no overlap, compute and maxima within the model."""
    for node in twin.nodes.values():
        for gpu in node.gpus:
            layout = [Instance(profile=i.profile, start=i.start) for i in gpu.instances]
            assert check_layout(gpu.gpu_model, layout) == [], (node.name, gpu.index, layout)


# ---- sizing ---------------------------------------------------------------------------------------------------


def test_a_sized_request_is_the_mapped_profiles_memory_and_compute() -> None:
    assert size("2g.20gb") == (SizedRequest(count=1, memory_mib=19968, compute_slices=2),)
    assert size("7g.80gb", count=3) == (SizedRequest(count=3, memory_mib=80384, compute_slices=7),)
    # the first model that has the profile gives the figures; none that has it: no sized request
    assert sized_requests({"nvidia.com/mig-1g.5gb": 1}, [A100_80, A100_40])[0].memory_mib == 4864
    assert sized_requests({"nvidia.com/mig-1g.5gb": 1}, [A100_80]) == ()
    assert sized_requests({"nvidia.com/gpu": 1}, [A100_80]) == ()


def test_a_profile_covers_a_request_with_at_least_its_memory_and_compute() -> None:
    request = size("2g.20gb")[0]
    assert covers(A100_80.profile("2g.20gb"), request) and covers(A100_80.profile("3g.40gb"), request)
    assert not covers(A100_80.profile("1g.20gb"), request)  # same memory, one compute slice short


# ---- HAMi -----------------------------------------------------------------------------------------------------


def test_hami_places_1g_and_3g_from_the_top_and_the_others_from_the_bottom() -> None:
    twin = cluster({"node-a": 1})
    hami.attach(twin, HamiKnobs())
    for name, profile in (("a", "1g.10gb"), ("b", "2g.20gb"), ("c", "1g.10gb"), ("d", "3g.40gb")):
        add(twin, name, profile)
    twin.advance(60)
    assert held(twin, "node-a", 0) == {("1g.10gb", 6, "a"), ("2g.20gb", 0, "b"), ("1g.10gb", 5, "c")}
    assert twin.pod("d").node is None  # 3g at 4 overlaps the 1g slices, at 0 the 2g: no placement, no repacking
    valid(twin)


def test_hami_takes_the_smallest_allowed_profile_that_covers_the_request() -> None:
    twin = cluster({"node-a": 1})
    chart = hami.attach(twin, HamiKnobs())
    names = lambda request: [p.name for p, _ in chart.candidates(A100_80, request)]  # noqa: E731
    assert names(size("1g.20gb")[0]) == ["2g.20gb", "3g.40gb", "7g.80gb"]  # the chart has no 1g.20gb
    assert names(size("4g.40gb")[0]) == ["7g.80gb"]  # nor a 4g: a 3g has the memory, not the compute
    every = ["1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]
    listed = hami.Hami(cluster({"node-b": 1}), HamiKnobs(allowlist={"A100-80GB": every}))
    assert [p.name for p, _ in listed.candidates(A100_80, size("1g.20gb")[0])][:2] == ["1g.20gb", "2g.20gb"]
    assert [p.name for p, _ in listed.candidates(A100_80, size("4g.40gb")[0])] == ["4g.40gb", "7g.80gb"]


def test_hami_packs_the_busiest_node_and_spreads_over_its_gpus() -> None:
    twin = cluster({"node-a": 2, "node-b": 2})
    hami.attach(twin, HamiKnobs())
    add(twin, "first", "2g.20gb")
    twin.advance(10)
    add(twin, "second", "2g.20gb")
    twin.advance(10)
    first, second = twin.pod("first"), twin.pod("second")
    assert first.node == second.node == "node-a"  # equal scores go by name, then binpack follows the usage
    assert {first.devices[0].gpu, second.devices[0].gpu} == {0, 1}  # spread: the idle GPU first


def test_hami_creates_one_instance_at_a_time_per_node() -> None:
    twin = cluster({"node-a": 1})
    hami.attach(twin, HamiKnobs(allocate_s=2.0))
    for name in ("a", "b", "c"):
        add(twin, name, "1g.10gb")
    twin.advance(30)
    assert [twin.pod(n).started_at for n in ("a", "b", "c")] == [2.0, 4.0, 6.0]
    assert twin.instances_created == 3 and twin.plugin_restarts == 0


def test_hami_leaves_a_pod_that_fits_nowhere_pending_until_capacity_frees() -> None:
    twin = cluster({"node-a": 1})
    hami.attach(twin, HamiKnobs(allocate_s=2.0, reclaim_interval_s=5.0))
    add(twin, "small", "1g.10gb", duration_s=100)
    twin.advance(1)
    add(twin, "whole", "7g.80gb")
    twin.advance(50)
    assert twin.pod("whole").node is None and twin.pod("small").started_at == 2.0
    twin.advance(100)
    assert twin.pod("whole").started_at == 104.0  # the small pod ends at 102; the next Allocate clears its slot
    assert held(twin, "node-a", 0) == {("7g.80gb", 0, "whole")}
    assert twin.evictions == []


def test_hami_reclaims_an_ended_pods_instance_at_its_next_round() -> None:
    twin = cluster({"node-a": 1})
    hami.attach(twin, HamiKnobs(allocate_s=2.0, reclaim_interval_s=5.0))
    add(twin, "short", "3g.40gb", duration_s=6)  # starts at 2, ends at 8
    twin.advance(9)
    assert held(twin, "node-a", 0) == {("3g.40gb", 4, None)}
    twin.advance(2)  # the reconciler's round at 10 s
    assert held(twin, "node-a", 0) == set()


def test_hami_and_dra_destroy_free_instances_at_start_up() -> None:
    layout = [InstanceState(profile="3g.40gb", start=0), InstanceState(profile="3g.40gb", start=4)]
    for attach in (lambda t: hami.attach(t, HamiKnobs()), lambda t: dra.attach(t, DraKnobs(), 0)):
        twin = cluster({"node-a": 1}, instances={("node-a", 0): layout})
        attach(twin)
        assert held(twin, "node-a", 0) == set()


# ---- DRA ------------------------------------------------------------------------------------------------------


def test_dra_walks_devices_by_name_so_1g10gb_comes_before_1g5gb() -> None:
    assert dra.device_name(3, A100_40.profile("1g.10gb"), 2) == "gpu-3-mig-1g10gb-15-2"
    twin = cluster({"node-a": 2}, model="A100-40GB")
    dra.attach(twin, DraKnobs(prepare_s=1.0), seed=0)
    for name in ("a", "b", "c", "d", "e"):
        add(twin, name, "1g.5gb", model="A100-40GB")
    twin.advance(30)
    # at least 1g.5gb: the first free device by name is a 1g.10gb, lowest start first, GPU 0 before GPU 1
    assert held(twin, "node-a", 0) == {
        ("1g.10gb", 0, "a"),
        ("1g.10gb", 2, "b"),
        ("1g.10gb", 4, "c"),
        ("1g.10gb", 6, "d"),
    }
    assert held(twin, "node-a", 1) == {("1g.10gb", 0, "e")}


def test_dra_serializes_prepare_and_unprepare_on_the_node_lock() -> None:
    twin = cluster({"node-a": 1})
    dra.attach(twin, DraKnobs(prepare_s=2.0, unprepare_s=1.0), seed=0)
    add(twin, "a", "7g.80gb", duration_s=10)
    add(twin, "b", "7g.80gb")
    twin.advance(11)
    assert twin.pod("a").started_at == 2.0 and twin.pod("b").node is None
    twin.advance(20)
    # a ends at 12; unprepare holds the lock until 13, when its device is free; b's prepare ends at 15
    assert twin.pod("b").started_at == 15.0
    assert twin.evictions == []


def test_dra_picks_among_feasible_nodes_at_random_but_reproducibly() -> None:
    def placed(seed: int) -> list[str | None]:
        twin = cluster({"node-a": 1, "node-b": 1, "node-c": 1})
        dra.attach(twin, DraKnobs(), seed=seed)
        for index in range(6):
            add(twin, f"p{index}", "3g.40gb")
        twin.advance(60)
        return [twin.pod(f"p{index}").node for index in range(6)]

    assert placed(1) == placed(1)
    assert len(set(placed(1))) > 1


PROFILES_80 = ["1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]


@settings(max_examples=25, deadline=None)
@given(
    peer=st.sampled_from(["hami", "dra"]),
    pods=st.lists(
        st.tuples(
            st.sampled_from(PROFILES_80), st.floats(min_value=0, max_value=60), st.floats(min_value=1, max_value=90)
        ),
        min_size=1,
        max_size=14,
    ),
)
def test_per_pod_allocators_keep_every_layout_valid_and_evict_nothing(
    peer: str, pods: Sequence[tuple[str, float, float]]
) -> None:
    twin = cluster({"node-a": 2, "node-b": 1})
    if peer == "hami":
        hami.attach(twin, HamiKnobs())
    else:
        dra.attach(twin, DraKnobs(), seed=0)
    for index, (profile, arrival, duration) in enumerate(sorted(pods, key=lambda p: p[1])):
        twin.run_until(arrival)
        add(twin, f"p{index}", profile, duration_s=duration)
        valid(twin)
    twin.advance(300)
    valid(twin)
    assert twin.evictions == []
    for pod in twin.pods.values():  # everyone got at least what it asked for, on one node
        asked = pod.spec.at_least[0]
        for device in pod.devices:
            assert covers(A100_80.profile(device.profile), asked)
    assert all(pod.started_at is not None for pod in twin.pods.values())  # all fit once the others ended


# ---- nos ------------------------------------------------------------------------------------------------------


def test_nos_plans_when_the_batch_has_been_idle_10_s() -> None:
    twin = cluster({"node-a": 1})
    partitioner = nos.attach(twin, NosKnobs())
    arrive(twin, 1, "a", "7g.80gb")
    arrive(twin, 5, "b", "7g.80gb")
    twin.run_until(14.9)
    assert partitioner.plans == 0 and partitioner.batch_open
    twin.run_until(15.1)
    assert partitioner.plans == 1 and not partitioner.batch_open


def test_nos_closes_a_batch_that_keeps_growing_after_60_s() -> None:
    twin = cluster({"node-a": 1})
    partitioner = nos.attach(twin, NosKnobs())
    for second in range(0, 100, 5):
        arrive(twin, second, f"p{second}", "7g.80gb")
    twin.run_until(59.9)
    assert partitioner.plans == 0
    twin.run_until(60.1)
    assert partitioner.plans == 1


def test_nos_repartitions_free_devices_only_and_restarts_the_device_plugin() -> None:
    layout = [InstanceState(profile="1g.10gb", start=s, pod="busy" if s == 6 else None) for s in range(7)]
    twin = cluster({"node-a": 1}, instances={("node-a", 0): layout})
    knobs = NosKnobs()
    partitioner = nos.attach(twin, knobs)
    arrive(twin, 0, "wants-3g", "3g.40gb")
    twin.advance(60)
    assert ("1g.10gb", 6, "busy") in held(twin, "node-a", 0)  # the used device stays where it was
    assert twin.pod("wants-3g").devices[0].profile == "3g.40gb"
    assert partitioner.reconfigurations == 1 and twin.plugin_restarts == 1 and twin.evictions == []
    # the new instance became usable only once the plugin came back
    assert twin.pod("wants-3g").started_at == pytest.approx(10 + knobs.apply_s + knobs.plugin_restart_s)
    valid(twin)


def test_nos_plan_keeps_every_used_device_by_count() -> None:
    busy = [InstanceState(profile="3g.40gb", start=4, pod="busy")]
    twin = cluster({"node-a": 2}, instances={("node-a", 0): busy})
    twin.add_pod("w1", {"nvidia.com/mig-4g.40gb": 1})
    twin.add_pod("w2", {"nvidia.com/mig-4g.40gb": 1})
    changes = nos.plan(twin.nodes, twin.pending_pods(), twin.demand)
    targets = changes["node-a"]
    assert targets[0]["3g.40gb"] >= 1 and targets[0]["4g.40gb"] == 1
    assert targets[1]["4g.40gb"] == 1


def test_nos_leaves_a_node_unchanged_when_no_pending_pod_would_fit_it() -> None:
    twin = cluster({"node-a": 1})
    twin.node("node-a").labels["pool"] = "other"
    twin.reschedule()
    twin.add_pod("picky", {"nvidia.com/mig-7g.80gb": 1}, node_selector={"pool": "training"})
    assert nos.plan(twin.nodes, twin.pending_pods(), twin.demand) == {}
