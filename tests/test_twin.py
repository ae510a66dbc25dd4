"""The twin's clock, device plugin and GFD, scheduler, pods, evictions and its ClusterPort snapshot."""

from __future__ import annotations

from typing import Any

import pytest

from nvidia_protocol.labels import MIG_CONFIG_LABEL, PRODUCT_LABEL
from optimizer.controller.port import EvictionOutcome
from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from simulations.twin import PodPhase, SimClock, Twin
from simulations.twin.api.render import node_object
from solver.errors import MigoptError
from solver.planner import make_plan
from solver.snapshot import Taint, Toleration, parse_snapshot
from tests.twin_fixtures import CONFIG, T

ONE_G = "nvidia.com/mig-1g.5gb"
TWO_G = "nvidia.com/mig-2g.10gb"


def instances(*profiles: tuple[str, int], pods: dict[int, str] | None = None) -> list[dict[str, Any]]:
    return [{"profile": p, "start": s, "pod": (pods or {}).get(s)} for p, s in profiles]


def ones(free: int = 7, held_by: str | None = None) -> list[dict[str, Any]]:
    """A 7×1g.5gb A100-40GB layout where all but `free` instances are held by `held_by`."""
    return instances(*[("1g.5gb", s) for s in range(7)], pods={s: held_by or "x" for s in range(7 - free)})


def node(name: str, *gpus: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": name, "gpus": [{"index": i, "model": "A100-40GB", "instances": g} for i, g in enumerate(gpus)]} | (
        extra
    )


def make(*nodes: dict[str, Any], pods: list[dict[str, Any]] | None = None, seed: int = 0) -> Twin:
    return Twin.from_snapshot(parse_snapshot({"nodes": list(nodes), "pods": pods or []}), CONFIG, timings=T, seed=seed)


# ---- clock ----------------------------------------------------------------------------------------------


def test_clock_fires_in_time_then_scheduling_order() -> None:
    clock = SimClock()
    fired: list[str] = []
    clock.schedule(5, lambda: fired.append("b"))
    clock.schedule(2, lambda: fired.append("a"))
    clock.schedule(5, lambda: fired.append("c"))
    clock.schedule(9, lambda: fired.append("late")).cancel()
    assert clock.run_until(6) == 3 and fired == ["a", "b", "c"] and clock.now == 6
    with pytest.raises(ValueError):
        clock.schedule(1, lambda: None)
    clock.call_in(1, lambda: fired.append("d"))
    assert clock.run_until_idle(100) == 1 and clock.now == 7 and fired[-1] == "d"


# ---- device plugin and GFD ------------------------------------------------------------------------------


def test_mixed_strategy_counts_and_keeps_stale_resources_at_zero() -> None:
    layout = instances(("3g.20gb", 4), ("2g.10gb", 0), ("1g.5gb", 2), ("1g.5gb", 3))
    t = make(node("a", layout, ones(), allocatable={"nvidia.com/mig-7g.40gb": 1, "cpu": 64}))
    allocatable = t.snapshot().nodes[0].allocatable
    assert allocatable == {
        "cpu": 64, "nvidia.com/gpu": 0, "nvidia.com/mig-7g.40gb": 0, ONE_G: 9, TWO_G: 1, "nvidia.com/mig-3g.20gb": 1,
    }  # fmt: skip
    labels = t.node("a").labels
    assert labels[PRODUCT_LABEL] == "NVIDIA-A100-SXM4-40GB" and labels["nvidia.com/gpu.count"] == "2"
    assert labels["nvidia.com/mig.capable"] == "true" and labels["nvidia.com/mig.strategy"] == "mixed"
    assert labels["nvidia.com/mig-1g.5gb.count"] == "9" and labels["nvidia.com/mig-2g.10gb.count"] == "1"


def test_single_strategy_valid_and_invalid() -> None:
    single = {"nvidia.com/mig.strategy": "single"}
    t = make(node("a", ones(), ones(), labels=single), node("b", ones(), instances(("2g.10gb", 0)), labels=single))
    assert t.allocatable("a") == {"nvidia.com/gpu": 14}
    assert t.node("a").labels[PRODUCT_LABEL] == "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"
    assert t.node("a").labels["nvidia.com/gpu.count"] == "14"
    assert t.allocatable("b") == {"nvidia.com/gpu": 0}
    assert t.node("b").labels[PRODUCT_LABEL] == "NVIDIA-A100-SXM4-40GB-MIG-INVALID"
    assert t.node("b").labels["nvidia.com/gpu.count"] == "0"

    selector = {PRODUCT_LABEL: "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"}
    pod = t.add_pod("ns/s", {"nvidia.com/gpu": 3}, node_selector=selector)
    assert pod.phase == PodPhase.RUNNING and pod.node == "a" and len(pod.devices) == 3

    t.set_strategy("a", "mixed")  # both operands roll: resources gone now, back after the start delay
    assert t.allocatable("a") == {"nvidia.com/gpu": 0}
    t.advance(T.restore_s)
    assert t.allocatable("a") == {"nvidia.com/gpu": 0, ONE_G: 14}
    assert t.node("a").labels["nvidia.com/mig.strategy"] == "mixed"


# ---- scheduler ------------------------------------------------------------------------------------------


def test_scheduler_honours_cordon_selector_and_taints() -> None:
    t = make(
        node("a", ones(), unschedulable=True),
        node("b", ones(), labels={"pool": "p1"}),
        node("c", ones(), taints=[{"key": "dedicated", "value": "infer"}]),
    )
    assert t.add_pod("ns/sel", {ONE_G: 1}, node_selector={"pool": "p1"}).node == "b"
    blocked = t.add_pod("ns/blocked", {ONE_G: 1}, node_selector={"pool": "nowhere"})
    assert blocked.phase == PodPhase.PENDING
    tol = Toleration(key="dedicated", operator="Equal", value="infer", effect="NoSchedule")
    assert t.add_pod("ns/tol", {ONE_G: 1}, node_selector={"pool": "p1"}, tolerations=[tol]).node == "b"

    t.set_unschedulable("b", True)
    t.patch_node("c", labels={"pool": "p1"})  # tainted, and the pod does not tolerate it
    assert t.add_pod("ns/wait", {ONE_G: 1}, node_selector={"pool": "p1"}).phase == PodPhase.PENDING
    t.node("c").taints = [Taint(key="other", effect="PreferNoSchedule")]
    t.reschedule()  # direct edits of the twin's objects need an explicit pass
    assert t.pod("ns/wait").node == "c"


def test_all_devices_of_a_pod_come_from_one_node() -> None:
    t = make(node("a", ones(free=1, held_by="ns/xa")), node("b", ones(free=1, held_by="ns/xb")))
    pod = t.add_pod("ns/two", {ONE_G: 2})
    assert pod.phase == PodPhase.PENDING  # one free device on each node is not two on one
    t.evict("ns/xa")  # its replacement queues behind ns/two
    assert pod.node == "a" and len(pod.devices) == 2
    assert t.pod("ns/xa-r1").phase == PodPhase.PENDING and t.pod("ns/xa-r1").spec.requests == {ONE_G: 6}


def test_priority_then_arrival_decides_who_gets_a_freed_device() -> None:
    t = make(node("a", ones(free=0, held_by="ns/busy")))
    t.add_pod("ns/low", {ONE_G: 1}, priority=0)
    t.add_pod("ns/first", {ONE_G: 1}, priority=10)
    t.add_pod("ns/second", {ONE_G: 1}, priority=10)
    assert [p.name for p in t.snapshot().pods] == ["ns/first", "ns/second", "ns/low"]
    t.node("a").gpu(0).instances[6].pod = None  # as if one device were released out of band
    t.reschedule()
    assert t.pod("ns/first").phase == PodPhase.RUNNING and t.pod("ns/second").phase == PodPhase.PENDING


def test_pods_finish_after_their_duration_and_free_their_devices() -> None:
    t = make(node("a", ones(free=1)))
    short = t.add_pod("ns/short", {ONE_G: 1}, duration_s=100)
    waiting = t.add_pod("ns/next", {ONE_G: 1})
    assert short.phase == PodPhase.RUNNING and waiting.phase == PodPhase.PENDING
    t.run_until(99)
    assert short.phase == PodPhase.RUNNING
    t.run_until(100)
    assert short.phase == PodPhase.SUCCEEDED and short.finished_at == 100
    assert waiting.phase == PodPhase.RUNNING and waiting.devices == short.devices
    assert t.evict("ns/short") == EvictionOutcome.GONE


def test_paused_device_plugin_blocks_binding() -> None:
    t = make(node("a", ones(), labels={MIG_CONFIG_LABEL: "all-1g"}))
    t.patch_node("a", labels={"nvidia.com/gpu.deploy.device-plugin": "paused-for-mig-change"})
    assert t.allocatable("a") == {"nvidia.com/gpu": 0, ONE_G: 0}
    pod = t.add_pod("ns/p", {ONE_G: 1})
    assert pod.phase == PodPhase.PENDING
    t.patch_node("a", labels={"nvidia.com/gpu.deploy.device-plugin": "true"})
    t.advance(T.restore_s - 1)
    assert pod.phase == PodPhase.PENDING
    t.advance(1)
    assert pod.phase == PodPhase.RUNNING


def test_bad_pod_request_is_refused() -> None:
    t = make(node("a", ones()))
    with pytest.raises(MigoptError):
        t.add_pod("ns/bad", {"nvidia.com/mig-9g.99gb": 1})
    t.add_pod("ns/p", {ONE_G: 1})
    with pytest.raises(MigoptError):
        t.add_pod("ns/p", {ONE_G: 1})


def test_nodes_carry_kubelets_labels_and_a_pod_pinned_by_hostname_runs_there() -> None:
    t = make(node("a", ones()), node("b", ones(), instances(("3g.20gb", 0), ("3g.20gb", 4))))
    labels = t.snapshot().nodes[1].labels
    assert labels["kubernetes.io/hostname"] == "b"
    assert labels["kubernetes.io/os"] == "linux" and labels["kubernetes.io/arch"] == "amd64"
    for n in range(4):  # both nodes have free 1g devices
        assert t.add_pod(f"ns/pinned-{n}", {ONE_G: 1}, node_selector={"kubernetes.io/hostname": "a"}).node == "a"
    three_g = {"nvidia.com/mig-3g.20gb": 1}
    assert t.add_pod("ns/big", three_g, node_selector={"kubernetes.io/hostname": "a"}).node is None  # "b" has them
    assert t.add_pod("ns/there", three_g, node_selector={"kubernetes.io/hostname": "b"}).node == "b"
    shown = node_object(t, t.node("b"), 1, lambda _: "2026-01-01T00:00:00Z", agent=False)["metadata"]["labels"]
    assert shown == t.node("b").labels  # the API facade shows exactly the labels the scheduler matches


def test_a_hostname_given_in_the_snapshot_is_kept() -> None:
    t = make(node("n", ones(), labels={"kubernetes.io/hostname": "ip-10-0-0-7"}))
    assert t.node("n").labels["kubernetes.io/hostname"] == "ip-10-0-0-7"
    assert t.add_pod("ns/p", {ONE_G: 1}, node_selector={"kubernetes.io/hostname": "ip-10-0-0-7"}).node == "n"


# ---- evictions ------------------------------------------------------------------------------------------


def test_eviction_outcomes_and_owned_pods_come_back_pending() -> None:
    t = make(node("a", ones(free=5, held_by="ns/web"), unschedulable=True))
    t.add_pdb("web", {"ns/web", "ns/api"}, min_available=1)
    assert t.evict("ns/nope") == EvictionOutcome.GONE
    assert t.evict("ns/web") == EvictionOutcome.BLOCKED  # the only healthy pod of the budget
    assert t.pod("ns/web").phase == PodPhase.RUNNING
    t.set_unschedulable("a", False)
    api = t.add_pod("ns/api", {ONE_G: 1})
    assert api.phase == PodPhase.RUNNING
    t.set_unschedulable("a", True)

    assert t.evict("ns/web") == EvictionOutcome.EVICTED
    assert t.pod("ns/web").deleted_at == 0 and t.node("a").gpu(0).instance_at(0).pod is None
    replacement = t.pod("ns/web-r1")
    assert replacement.phase == PodPhase.PENDING and replacement.spec.requests == {ONE_G: 2}
    assert t.evict("ns/api") == EvictionOutcome.BLOCKED  # the budget counts healthy pods only
    assert t.evict("ns/web-r1") == EvictionOutcome.EVICTED  # pending: no budget check
    assert t.pod("ns/web-r2").phase == PodPhase.PENDING
    assert [(e.pod, e.outcome) for e in t.evictions] == [
        ("ns/nope", "gone"), ("ns/web", "blocked"), ("ns/web", "evicted"), ("ns/api", "blocked"),
        ("ns/web-r1", "evicted"),
    ]  # fmt: skip
    assert {p.name for p in t.snapshot().pods} == {"ns/web-r2"}


def test_unowned_pod_is_not_recreated_and_a_pod_ignoring_sigterm_holds_on() -> None:
    t = make(node("a", ones(), unschedulable=False))
    t.grace_period_s = 45
    solo = t.add_pod("ns/solo", {ONE_G: 1}, owned=False)
    stubborn = t.add_pod("ns/stubborn", {ONE_G: 1}, ignores_eviction=True, owned=False)
    t.set_unschedulable("a", True)
    assert t.evict("ns/solo") == EvictionOutcome.EVICTED and not solo.active
    assert "ns/solo-r1" not in t.pods
    assert t.evict("ns/stubborn") == EvictionOutcome.EVICTED
    assert stubborn.phase == PodPhase.RUNNING and stubborn.terminating
    assert "ns/stubborn" in {p.name for p in t.snapshot().running}
    assert t.evict("ns/stubborn") == EvictionOutcome.EVICTED  # already terminating: nothing more
    t.advance(44)
    assert stubborn.active
    t.advance(1)
    assert not stubborn.active and all(i.pod is None for i in t.node("a").gpu(0).instances)


# ---- ClusterPort and snapshot ---------------------------------------------------------------------------


def test_port_metadata_calls() -> None:
    t = make(node("a", ones(), annotations={"keep": "1", "drop": "2"}))
    t.patch_node("a", annotations={"drop": None, "new": "3"}, labels={"team": "x"})
    t.set_unschedulable("a", True)
    t.record_event("Node", "a", "Test", "hello")
    state = t.snapshot().nodes[0]
    assert state.annotations == {"keep": "1", "new": "3"} and state.labels["team"] == "x" and state.unschedulable
    assert t.events[0].reason == "Test" and t.now() == 0
    t.write_mig_config("version: v1\n")
    assert t.read_mig_config() == "version: v1\n"
    with pytest.raises(KeyError):
        t.patch_node("nope", labels={"x": "y"})


def test_snapshot_is_valid_for_the_planner_and_deterministic() -> None:
    spec = ClusterSpec(nodes=4, gpus_per_node=2, pending_pods=12, multi_device_fraction=0.3, taint_fraction=0.3)
    data = generate_snapshot(spec)

    def run(seed: int) -> Twin:
        twin = Twin.from_snapshot(parse_snapshot(data), CONFIG, timings=T, seed=seed)
        twin.add_pod("ns/late", {"nvidia.com/mig-1g.10gb": 1}, duration_s=50)
        for pod in sorted(twin.snapshot().running, key=lambda p: p.name)[:3]:
            twin.evict(pod.name)
        twin.advance(60)
        return twin

    twin = run(1)
    snapshot = twin.snapshot()
    again = parse_snapshot(snapshot.model_dump())
    assert again == snapshot
    held = {i.pod for n in snapshot.nodes for g in n.gpus for i in g.instances if i.pod}
    assert held == {p.name for p in snapshot.running}
    make_plan(snapshot)
    assert run(1).snapshot() == snapshot
