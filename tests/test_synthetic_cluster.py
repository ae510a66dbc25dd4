"""The synthetic cluster generator: benchmarks and property tests rely on valid, reproducible snapshots."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver.catalog import load_catalog
from solver.geometry import Instance, check_layout
from solver.profiles import parse_profile, profile_from_resource
from solver.snapshot import parse_snapshot

SPECS = [
    ClusterSpec(),
    ClusterSpec(nodes=30, pending_pods=200, seed=1),
    ClusterSpec(nodes=20, fragmented=True, seed=2),
    ClusterSpec(nodes=20, taint_fraction=0.3, multi_device_fraction=0.5, selector_fraction=0.5, seed=3),
    ClusterSpec(nodes=15, models=["A30", "H100-94GB", "H200"], gpus_per_node=4, seed=4),
    ClusterSpec(nodes=10, used_fraction=0.0, empty_gpu_fraction=0.0, seed=5),
    ClusterSpec(nodes=10, used_fraction=1.0, empty_gpu_fraction=1.0, fragmented=True, seed=6),
    ClusterSpec(nodes=0, pending_pods=10, seed=7),
]


def _instances(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for n in data["nodes"] for g in n["gpus"] for i in g["instances"]]


def _pending_profiles(data: dict[str, Any]) -> list[str]:
    return [profile_from_resource(r) for p in data["pods"] for r, c in p["requests"].items() for _ in range(c)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"seed{s.seed}")
def test_output_parses(spec: ClusterSpec) -> None:
    data = generate_snapshot(spec)
    snapshot = parse_snapshot(data)
    assert len(snapshot.nodes) == spec.nodes
    assert all(len(n.gpus) == spec.gpus_per_node for n in snapshot.nodes)
    assert len(snapshot.pods) == spec.pending_pods
    holders = {i.pod for n in snapshot.nodes for g in n.gpus for i in g.instances if i.pod}
    assert holders == set(snapshot.running_by_name)
    assert len(holders) == len(snapshot.running)
    assert all(p.priority in spec.priorities for p in snapshot.pods)
    assert all(r.priority in spec.priorities for r in snapshot.running)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"seed{s.seed}")
def test_every_layout_is_feasible_and_plain(spec: ClusterSpec) -> None:
    catalog = load_catalog()
    for node in generate_snapshot(spec)["nodes"]:
        models = {g["model"] for g in node["gpus"]}
        assert len(models) <= 1
        for gpu in node["gpus"]:
            layout = [Instance(profile=i["profile"], start=i["start"]) for i in gpu["instances"]]
            assert check_layout(catalog.model(gpu["model"]), layout) == []
            assert all("+" not in i["profile"] for i in gpu["instances"])
    assert all("+" not in p for p in _pending_profiles(generate_snapshot(spec)))


def test_same_seed_same_output_and_other_seed_differs() -> None:
    spec = ClusterSpec(nodes=20, taint_fraction=0.2, multi_device_fraction=0.3)
    assert generate_snapshot(spec) == generate_snapshot(spec.model_copy())
    assert generate_snapshot(spec) != generate_snapshot(spec.model_copy(update={"seed": 1}))


def test_names_sort_in_creation_order() -> None:
    data = generate_snapshot(ClusterSpec(nodes=12, pending_pods=15))
    names = [n["name"] for n in data["nodes"]]
    assert names[0] == "node-00001"
    assert names == sorted(names)
    pods = [p["name"] for p in data["pods"]]
    assert pods[0] == "pend/p-000001"
    assert pods == sorted(pods)
    assert all(r["name"].startswith("run/") for r in data["running"])


@pytest.mark.parametrize("fragmented", [False, True])
def test_used_fraction_roughly_respected(fragmented: bool) -> None:
    for fraction in (0.2, 0.7):
        data = generate_snapshot(ClusterSpec(nodes=100, used_fraction=fraction, fragmented=fragmented))
        instances = _instances(data)
        used = sum(1 for i in instances if i.get("pod"))
        assert used / len(instances) == pytest.approx(fraction, abs=0.04)


def test_empty_gpu_fraction_roughly_respected() -> None:
    data = generate_snapshot(ClusterSpec(nodes=100, empty_gpu_fraction=0.25))
    gpus = [g for n in data["nodes"] for g in n["gpus"]]
    empty = sum(1 for g in gpus if not g["instances"])
    assert empty / len(gpus) == pytest.approx(0.25, abs=0.05)


def test_default_demand_favours_small_profiles() -> None:
    profiles = _pending_profiles(generate_snapshot(ClusterSpec(nodes=20, pending_pods=2000)))
    small = sum(1 for p in profiles if parse_profile(p).gpu_slices <= 2)
    assert small / len(profiles) > 0.6


def test_fragmented_demand_is_mostly_big_and_layouts_mostly_1g() -> None:
    data = generate_snapshot(ClusterSpec(nodes=50, pending_pods=2000, fragmented=True))
    profiles = _pending_profiles(data)
    big = sum(1 for p in profiles if parse_profile(p).gpu_slices >= 3)
    assert big / len(profiles) > 0.75
    instances = _instances(data)
    one_g = sum(1 for i in instances if parse_profile(i["profile"]).gpu_slices == 1)
    assert one_g / len(instances) > 0.75


def test_demand_uses_only_the_clusters_models() -> None:
    data = generate_snapshot(ClusterSpec(nodes=10, models=["A100-40GB"], pending_pods=300))
    model = load_catalog().model("A100-40GB")
    assert all(model.has_profile(p) for p in _pending_profiles(data))


def test_multi_device_selectors_and_tolerations() -> None:
    spec = ClusterSpec(
        nodes=40, pending_pods=1000, multi_device_fraction=0.3, selector_fraction=0.4, taint_fraction=0.25, pools=3
    )
    data = generate_snapshot(spec)
    pods = data["pods"]
    multi = [p for p in pods if sum(p["requests"].values()) == 2]
    assert 0.2 < len(multi) / len(pods) < 0.4
    assert all(sum(p["requests"].values()) in (1, 2) for p in pods)
    selectors = [p["node_selector"] for p in pods if "node_selector" in p]
    assert 0.3 < len(selectors) / len(pods) < 0.5
    assert {s["pool"] for s in selectors} == {"pool-0", "pool-1", "pool-2"}
    tolerating = [p for p in pods if p.get("tolerations")]
    assert 0.15 < len(tolerating) / len(pods) < 0.35
    tainted = [n for n in data["nodes"] if n["taints"]]
    assert 0 < len(tainted) < len(data["nodes"])
    assert tainted[0]["taints"] == [{"key": "dedicated", "value": "infer", "effect": "NoSchedule"}]
    assert {n["labels"]["pool"] for n in data["nodes"]} == {"pool-0", "pool-1", "pool-2"}


def test_no_taints_means_no_tolerations() -> None:
    data = generate_snapshot(ClusterSpec(nodes=20, pending_pods=300))
    assert not any(n["taints"] for n in data["nodes"])
    assert not any("tolerations" in p for p in data["pods"])


def test_spec_rejects_bad_values() -> None:
    with pytest.raises(ValidationError):
        ClusterSpec(used_fraction=1.5)
    with pytest.raises(ValidationError):
        ClusterSpec(models=["NoSuchGPU"])
    with pytest.raises(ValidationError):
        ClusterSpec(priorities=[])
    assert ClusterSpec(models=["H100-NVL"]).models == ["H100-94GB"]


def test_large_cluster_generates() -> None:
    data = generate_snapshot(ClusterSpec(nodes=5000, gpus_per_node=8, pending_pods=20000, seed=11))
    assert len(data["nodes"]) == 5000
    assert len(data["pods"]) == 20000
    assert data["nodes"][-1]["name"] == "node-05000"
