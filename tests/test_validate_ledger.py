"""Validation counts a GPU's free devices only when a placement takes from it, and still catches every device
given twice, taken where there is none, or placed on a GPU the plan does not have; and the greedy plan does not
depend on node labels no pending pod selects on (it classes nodes by the labels that matter)."""

from __future__ import annotations

from dataclasses import replace

from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver.decisions import advertises_nothing
from solver.greedy import greedy_decisions
from solver.plan import DeviceAssignment, Plan, PlanPolicy, PodPlacement
from solver.planner import make_plan
from solver.snapshot import ClusterSnapshot, parse_snapshot
from solver.validate import plan_problems

POLICY = PlanPolicy(time_limit_s=10)


def _planned() -> tuple[ClusterSnapshot, Plan]:
    snapshot = parse_snapshot(generate_snapshot(ClusterSpec(nodes=6, pending_pods=30, seed=3)))
    plan = make_plan(snapshot, POLICY, "greedy")
    assert plan_problems(snapshot, plan, POLICY) == [] and len(plan.placements) >= 2
    return snapshot, plan


def _with_placements(plan: Plan, placements: list[PodPlacement]) -> Plan:
    return plan.model_copy(update={"placements": placements})


def test_a_device_given_to_two_pods_is_caught() -> None:
    snapshot, plan = _planned()
    first, second, *rest = plan.placements
    stolen = replace(second, node=first.node, devices=first.devices)
    problems = plan_problems(snapshot, _with_placements(plan, [first, stolen, *rest]), POLICY)
    assert any(p.startswith(f"{second.pod}: ") and p.endswith("is not free") for p in problems)


def test_a_device_the_gpu_does_not_offer_is_caught() -> None:
    snapshot, plan = _planned()
    first, *rest = plan.placements
    device = first.devices[0]
    moved = replace(first, devices=[DeviceAssignment(gpu=device.gpu, profile="7g.40gb", start=0)])
    problems = plan_problems(snapshot, _with_placements(plan, [moved, *rest]), POLICY)
    assert f"{first.pod}: 7g.40gb on {first.node}/{device.gpu} is not free" in problems


def test_a_gpu_missing_from_the_plan_serves_nobody() -> None:
    snapshot, plan = _planned()
    first = plan.placements[0]
    gpu = first.devices[0].gpu
    kept = [g for g in plan.gpus if (g.node, g.index) != (first.node, gpu)]
    problems = plan_problems(snapshot, plan.model_copy(update={"gpus": kept}), POLICY)
    assert f"{first.node}/{gpu}: missing from plan" in problems
    assert f"{first.pod}: no GPU {gpu} on {first.node}" in problems


def test_an_infeasible_target_offers_no_device() -> None:
    snapshot, plan = _planned()
    first = plan.placements[0]
    gpu = first.devices[0].gpu
    broken = [
        replace(g, reconfigure=True, target={"7g.40gb": 2}) if (g.node, g.index) == (first.node, gpu)
        else g
        for g in plan.gpus
    ]  # fmt: skip
    problems = plan_problems(snapshot, plan.model_copy(update={"gpus": broken}), POLICY)
    assert any(p.startswith(f"{first.node}/{gpu}: target") and "infeasible" in p for p in problems)
    assert any(p.startswith(f"{first.pod}: ") and p.endswith("is not free") for p in problems)


def test_greedy_ignores_labels_no_pod_selects_on() -> None:
    raw = generate_snapshot(ClusterSpec(nodes=12, pending_pods=60, seed=5, selector_fraction=0.5))
    plain = parse_snapshot(raw)
    for node in raw["nodes"]:
        node["labels"] = {**node.get("labels", {}), "kubernetes.io/hostname": node["name"]}
    labelled = parse_snapshot(raw)
    assert greedy_decisions(labelled, POLICY) == greedy_decisions(plain, POLICY)


def test_only_a_single_strategy_node_without_one_profile_everywhere_advertises_nothing() -> None:
    def node(strategy: str, *layouts: list[str]) -> ClusterSnapshot:
        gpus = [
            {"index": i, "model": "A30", "instances": [{"profile": p, "start": s} for s, p in enumerate(layout)]}
            for i, layout in enumerate(layouts)
        ]
        labels = {"nvidia.com/mig.strategy": strategy}
        return parse_snapshot({"nodes": [{"name": "n", "labels": labels, "gpus": gpus}]})

    one = node("single", ["1g.6gb", "1g.6gb"], ["1g.6gb"])
    mixed_profiles = node("single", ["1g.6gb"], ["2g.12gb"])
    empty_gpu = node("single", ["1g.6gb"], [])
    assert not advertises_nothing(one.nodes[0], {})
    assert advertises_nothing(mixed_profiles.nodes[0], {})
    assert advertises_nothing(empty_gpu.nodes[0], {})
    assert not advertises_nothing(node("mixed", ["1g.6gb"], ["2g.12gb"]).nodes[0], {})
    assert not advertises_nothing(mixed_profiles.nodes[0], {("n", 1): {"1g.6gb": 4}})  # the plan makes it one
