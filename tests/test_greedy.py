"""The nos-style greedy baseline: what it reconfigures, where it places pods, and that it is deterministic."""

from typing import Any

from solver.decisions import Decisions, free_devices
from solver.greedy import greedy_decisions
from solver.plan import PlanPolicy
from solver.snapshot import ClusterSnapshot, parse_snapshot

A100_SINGLE_1G = "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"


def gpu(index: int = 0, *instances: tuple[str, int, str | None], model: str = "A100-40GB") -> dict[str, Any]:
    return {
        "index": index,
        "model": model,
        "instances": [{"profile": p, "start": s, "pod": pod} for p, s, pod in instances],
    }


def node(name: str, *gpus: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "gpus": list(gpus), **extra}


def pod(name: str, priority: int = 0, **requests: int) -> dict[str, Any]:
    """A mixed-strategy pending pod; keyword `mig_1g_5gb=2` asks for two `nvidia.com/mig-1g.5gb`."""
    resources = {
        "nvidia.com/mig-" + k.removeprefix("mig_").replace("_", ".", 1).replace("_", "."): v
        for k, v in requests.items()
    }
    return {"name": name, "requests": resources, "priority": priority}


def plan(data: dict[str, Any], **policy: Any) -> tuple[ClusterSnapshot, Decisions]:
    snapshot = parse_snapshot(data)
    decisions = greedy_decisions(snapshot, PlanPolicy(**policy))
    check_devices(snapshot, decisions)
    return snapshot, decisions


def check_devices(snapshot: ClusterSnapshot, decisions: Decisions) -> None:
    """Every placed device is a free device of its GPU under the decided target, and no device is given twice."""
    given = [d for devices in decisions.placements.values() for d in devices]
    assert len(given) == len(set(given))
    nodes = {n.name: n for n in snapshot.nodes}
    for devices in decisions.placements.values():
        assert len({d.node for d in devices}) == 1
        for device in devices:
            n = nodes[device.node]
            g = next(g for g in n.gpus if g.index == device.gpu)
            assert device in free_devices(n, g, decisions.targets.get((n.name, g.index)))
    for node_name, index in decisions.targets:
        g = next(g for g in nodes[node_name].gpus if g.index == index)
        assert not g.holders


def profiles(decisions: Decisions, pod_name: str) -> list[str]:
    return sorted(d.profile for d in decisions.placements[pod_name])


def test_idle_gpu_without_instances_gets_a_map_and_pods_are_placed() -> None:
    _, decisions = plan(
        {"nodes": [node("n1", gpu(0))], "pods": [pod("ns/a", mig_3g_20gb=1), pod("ns/b", mig_1g_5gb=2)]}
    )
    target = decisions.targets[("n1", 0)]
    assert target.get("3g.20gb", 0) >= 1 and target.get("1g.5gb", 0) >= 2
    assert profiles(decisions, "ns/a") == ["3g.20gb"]
    assert profiles(decisions, "ns/b") == ["1g.5gb", "1g.5gb"]


def test_gpu_with_an_instance_held_by_a_pod_is_never_reconfigured() -> None:
    held = gpu(0, ("3g.20gb", 0, "ns/run-1"), ("3g.20gb", 4, None))
    _, decisions = plan({"nodes": [node("n1", held)], "pods": [pod("ns/a", mig_1g_5gb=1), pod("ns/b", mig_3g_20gb=1)]})
    assert decisions.targets == {}
    assert "ns/a" not in decisions.placements
    assert [(d.profile, d.start) for d in decisions.placements["ns/b"]] == [("3g.20gb", 4)]


def test_free_instances_of_a_kept_gpu_are_used_before_reconfiguring() -> None:
    idle = gpu(0, ("3g.20gb", 0, None), ("3g.20gb", 4, None))
    _, decisions = plan({"nodes": [node("n1", idle), node("n2", gpu(0))], "pods": [pod("ns/a", mig_3g_20gb=2)]})
    assert decisions.targets == {}
    assert [(d.node, d.start) for d in decisions.placements["ns/a"]] == [("n1", 0), ("n1", 4)]


def test_keeping_useful_free_instances_counts_when_choosing_a_map() -> None:
    """A reconfiguration must not trade the free 3g.20gb a pod needs for the 1g.5gb another pod needs."""
    idle = gpu(0, ("3g.20gb", 0, None), ("3g.20gb", 4, None))
    _, decisions = plan({"nodes": [node("n1", idle)], "pods": [pod("ns/a", mig_3g_20gb=1), pod("ns/b", mig_1g_5gb=1)]})
    assert set(decisions.placements) == {"ns/a", "ns/b"}


def test_node_selectors_and_taints_are_respected() -> None:
    selective = {**pod("ns/zoned", mig_1g_5gb=1), "node_selector": {"zone": "nowhere"}}
    tolerant = {**pod("ns/tolerant", mig_1g_5gb=1), "tolerations": [{"key": "gpu", "operator": "Exists"}]}
    tainted = node("n1", gpu(0), taints=[{"key": "gpu", "value": "yes", "effect": "NoSchedule"}])
    data = {"nodes": [tainted], "pods": [selective, pod("ns/plain", mig_1g_5gb=1), tolerant]}
    _, decisions = plan(data)
    assert set(decisions.placements) == {"ns/tolerant"}


def test_a_pod_matching_no_node_leaves_the_cluster_unchanged() -> None:
    selective = {**pod("ns/zoned", mig_1g_5gb=1), "node_selector": {"zone": "nowhere"}}
    _, decisions = plan({"nodes": [node("n1", gpu(0))], "pods": [selective]})
    assert decisions == Decisions()


def test_multi_device_pod_is_placed_on_one_node_or_not_at_all() -> None:
    half_a = gpu(0, ("4g.20gb", 0, "ns/run-1"), ("1g.5gb", 4, None), ("1g.5gb", 5, None))
    half_b = gpu(0, ("4g.20gb", 0, "ns/run-2"), ("3g.20gb", 4, None))
    data = {"nodes": [node("n1", half_a), node("n2", half_b)], "pods": [pod("ns/a", mig_1g_5gb=2, mig_3g_20gb=1)]}
    _, decisions = plan(data)
    assert decisions == Decisions()
    _, decisions = plan({**data, "nodes": [*data["nodes"], node("n3", gpu(0))]})
    assert {d.node for d in decisions.placements["ns/a"]} == {"n3"}
    assert profiles(decisions, "ns/a") == ["1g.5gb", "1g.5gb", "3g.20gb"]
    assert list(decisions.targets) == [("n3", 0)]


def test_higher_priority_pods_are_served_first_when_capacity_is_short() -> None:
    held = gpu(0, ("3g.20gb", 0, "ns/run-1"), ("3g.20gb", 4, None))
    data = {"nodes": [node("n1", held)], "pods": [pod("a/low", mig_3g_20gb=1), pod("b/high", 5, mig_3g_20gb=1)]}
    _, decisions = plan(data)
    assert set(decisions.placements) == {"b/high"}
    data = {"nodes": [node("n1", gpu(0))], "pods": [pod("a/low", mig_4g_20gb=1), pod("b/high", 5, mig_4g_20gb=1)]}
    _, decisions = plan(data)
    assert set(decisions.placements) == {"b/high"}


def test_smaller_requests_go_first_at_equal_priority() -> None:
    held = gpu(0, ("4g.20gb", 0, "ns/run-1"), ("3g.20gb", 4, None))
    data = {"nodes": [node("n1", held)], "pods": [pod("ns/a", mig_3g_20gb=1), pod("ns/b", mig_1g_5gb=1)]}
    _, decisions = plan(data)
    assert set(decisions.placements) == {"ns/a"}  # ns/b's 1g.5gb does not exist; ns/a still gets the 3g.20gb


def test_max_reconfigurations_is_respected() -> None:
    data = {"nodes": [node("n1", gpu(0), gpu(1))], "pods": [pod("ns/a", mig_7g_40gb=1), pod("ns/b", mig_7g_40gb=1)]}
    _, unlimited = plan(data)
    assert len(unlimited.targets) == 2 and len(unlimited.placements) == 2
    _, capped = plan(data, max_reconfigurations=1)
    assert list(capped.targets) == [("n1", 0)] and set(capped.placements) == {"ns/a"}
    _, none = plan(data, max_reconfigurations=0)
    assert none == Decisions()


def test_a_target_equal_to_the_current_map_is_not_a_reconfiguration() -> None:
    idle = gpu(0, ("7g.40gb", 0, None))
    _, decisions = plan({"nodes": [node("n1", idle)], "pods": [pod("ns/a", mig_7g_40gb=1)]}, max_reconfigurations=0)
    assert decisions.targets == {} and profiles(decisions, "ns/a") == ["7g.40gb"]


def test_same_input_gives_identical_output_whatever_the_order() -> None:
    nodes = [
        node("n2", gpu(0), gpu(1, ("3g.20gb", 0, "ns/run-1"))),
        node("n1", gpu(1), gpu(0, ("2g.10gb", 0, None), ("2g.10gb", 2, None))),
        node("n3", gpu(0, model="A100-80GB")),
    ]
    pods = [
        pod("ns/p1", mig_1g_5gb=1),
        pod("ns/p2", 3, mig_2g_10gb=1),
        pod("ns/p3", mig_3g_20gb=2),
        pod("ns/p4", mig_1g_10gb=2),
        pod("ns/p5", 1, mig_4g_20gb=1),
        pod("ns/p6", mig_3g_40gb=1),
    ]
    _, first = plan({"nodes": nodes, "pods": pods})
    _, again = plan({"nodes": nodes, "pods": pods})
    _, shuffled = plan({"nodes": nodes[::-1], "pods": pods[::-1]})
    assert first == again == shuffled
    assert list(first.targets) == list(shuffled.targets)
    assert first.placements


def test_single_strategy_node_gets_every_gpu_set_to_one_profile() -> None:
    single = node("n1", gpu(0), gpu(1), labels={"nvidia.com/mig.strategy": "single"})
    request = {
        "name": "ns/p1",
        "requests": {"nvidia.com/gpu": 2},
        "priority": 0,
        "node_selector": {"nvidia.com/gpu.product": A100_SINGLE_1G},
    }
    _, decisions = plan({"nodes": [node("m1", gpu(0)), single], "pods": [request]})
    assert decisions.targets == {("n1", 0): {"1g.5gb": 7}, ("n1", 1): {"1g.5gb": 7}}
    assert [(d.node, d.gpu, d.start) for d in decisions.placements["ns/p1"]] == [("n1", 0, 0), ("n1", 0, 1)]


def test_single_strategy_node_with_a_busy_gpu_is_left_alone() -> None:
    busy = gpu(1, ("7g.40gb", 0, "ns/run-1"))
    single = node("n1", gpu(0), busy, labels={"nvidia.com/mig.strategy": "single"})
    request = {
        "name": "ns/p1",
        "requests": {"nvidia.com/gpu": 1},
        "node_selector": {"nvidia.com/gpu.product": A100_SINGLE_1G},
    }
    _, decisions = plan({"nodes": [single], "pods": [request]})
    assert decisions == Decisions()


def test_a_reverted_node_does_not_use_up_the_reconfiguration_cap() -> None:
    """n1 is reconfigured for the pod, which still does not fit there; n2 may then use the whole cap."""
    data = {"nodes": [node("n1", gpu(0)), node("n2", gpu(0), gpu(1))], "pods": [pod("ns/a", mig_7g_40gb=2)]}
    _, decisions = plan(data, max_reconfigurations=2)
    assert list(decisions.targets) == [("n2", 0), ("n2", 1)]
    assert {(d.node, d.gpu) for d in decisions.placements["ns/a"]} == {("n2", 0), ("n2", 1)}


def test_a_pod_that_no_longer_fits_does_not_stop_the_pods_after_it() -> None:
    """Pods take a node's devices in pod order; ns/a's two devices are gone after ns/c, ns/b's one is not."""
    idle = gpu(0, ("3g.20gb", 0, None), ("3g.20gb", 4, None))
    pods = [pod("ns/a", 5, mig_3g_20gb=2), pod("ns/b", mig_3g_20gb=1), pod("ns/c", 9, mig_3g_20gb=1)]
    _, decisions = plan({"nodes": [node("n1", idle)], "pods": pods}, max_reconfigurations=0)
    assert list(decisions.placements) == ["ns/c", "ns/b"]
    assert [d.start for d in decisions.placements["ns/c"] + decisions.placements["ns/b"]] == [0, 4]
