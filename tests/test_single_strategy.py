"""Single-strategy nodes: every plan leaves each GPU of such a node holding one and the same profile.

A node under the device plugin's `single` strategy advertises MIG devices only while all its GPUs hold one
profile; several profiles (or a MIG-enabled GPU with nothing created) make it `MIG-INVALID` with
`nvidia.com/gpu.count=0` (spec §1.10), so a pod placed there never runs and the node's other devices vanish.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solver.catalog import load_catalog
from solver.geometry import maximal_layouts
from solver.plan import Plan, PlanPolicy
from solver.planner import make_plan
from solver.snapshot import PRODUCT_LABEL, STRATEGY_LABEL, ClusterSnapshot, parse_snapshot
from solver.validate import plan_problems
from tests.cli_runner import run_cli

SINGLE = {STRATEGY_LABEL: "single"}
PRIORITIES = [0, 50, 100]


def _gpu(index: int, *instances: tuple[str, int, str | None], model: str = "A30") -> dict[str, Any]:
    return {
        "index": index,
        "model": model,
        "instances": [{"profile": p, "start": s, "pod": h} for p, s, h in instances],
    }


def _single_pod(name: str, count: int, product: str, priority: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "requests": {"nvidia.com/gpu": count},
        "priority": priority,
        "node_selector": {PRODUCT_LABEL: product},
    }


def _profiles_after(snapshot: ClusterSnapshot, plan: Plan, node: str) -> list[set[str]]:
    """Per GPU of the node (index order), the profiles it holds once the plan is carried out."""
    by_ref = {(g.node, g.index): g for g in plan.gpus}
    gpus = next(n for n in snapshot.nodes if n.name == node).gpus
    return [{p for p, c in by_ref[node, g.index].target.items() if c} for g in sorted(gpus, key=lambda g: g.index)]


# --- the reported case (issue 13 item 1) ------------------------------------------------------------------------

MIXED_PROFILE_TRAP = {
    "nodes": [
        {
            "name": "n0",
            "labels": {**SINGLE, PRODUCT_LABEL: "NVIDIA-A30-MIG-4g.24gb"},
            "gpus": [_gpu(0, ("4g.24gb", 0, "run/a")), _gpu(1, ("4g.24gb", 0, None))],
        }
    ],
    "running": [{"name": "run/a", "priority": 100}],
    "pods": [_single_pod("w/p", 2, "NVIDIA-A30-MIG-1g.6gb", priority=50)],
}


@pytest.mark.parametrize("policy", ["optimal", "greedy"])
def test_a_free_gpu_beside_a_protected_one_is_not_rebuilt_alone(policy: str) -> None:
    """GPU 1 rebuilt as 1g.6gb x4 next to GPU 0's 4g.24gb would serve the pod on paper and nothing in practice."""
    snapshot = parse_snapshot(MIXED_PROFILE_TRAP)
    plan = make_plan(snapshot, PlanPolicy(), policy)
    assert [g.reconfigure for g in plan.gpus] == [False, False]
    assert plan.evictions == [] and plan.placements == []
    assert [u.pod for u in plan.unplaced] == ["w/p"]
    assert _profiles_after(snapshot, plan, "n0") == [{"4g.24gb"}, {"4g.24gb"}]


def test_migopt_plan_keeps_the_single_strategy_node_whole(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "snapshot.yaml"
    path.write_text(yaml.safe_dump(MIXED_PROFILE_TRAP))
    result = run_cli(capsys, "plan", "--snapshot", str(path), "-o", "json")
    assert result.code == 0, result.err
    plan = json.loads(result.out)
    assert [(g["index"], g["target"], g["reconfigure"]) for g in plan["gpus"]] == [
        (0, {"4g.24gb": 1}, False),
        (1, {"4g.24gb": 1}, False),
    ]
    assert plan["placements"] == [] and [u["pod"] for u in plan["unplaced"]] == ["w/p"]


def test_the_whole_node_changes_when_its_holders_may_be_displaced() -> None:
    """With run/a below the pod's priority, both GPUs become 1g.6gb x4 and run/a is evicted."""
    data = {**MIXED_PROFILE_TRAP, "running": [{"name": "run/a", "priority": 10}]}
    snapshot = parse_snapshot(data)
    for policy in ("optimal", "greedy"):
        plan = make_plan(snapshot, PlanPolicy(), policy)
        if plan.placements:
            assert _profiles_after(snapshot, plan, "n0") == [{"1g.6gb"}, {"1g.6gb"}]
    optimal = make_plan(snapshot, PlanPolicy(), "optimal")
    assert [p.pod for p in optimal.placements] == ["w/p"] and optimal.evictions == ["run/a"]


def test_a_gpu_already_at_the_target_keeps_its_held_instances() -> None:
    """GPU 0 already holds 1g.6gb x4 (two held), GPU 1 only two: re-targeting the node to 1g.6gb x4 leaves GPU 0
    alone (mig-parted skips a GPU at its target), so only its free instances and GPU 1's four may be given out."""
    gpu0 = _gpu(0, ("1g.6gb", 0, "run/a"), ("1g.6gb", 1, "run/b"), ("1g.6gb", 2, None), ("1g.6gb", 3, None))
    gpu1 = _gpu(1, ("1g.6gb", 0, None), ("1g.6gb", 1, None))
    data = {
        "nodes": [{"name": "n0", "labels": SINGLE, "gpus": [gpu0, gpu1]}],
        "running": [{"name": "run/a"}, {"name": "run/b"}],
        "pods": [_single_pod(f"w/p{i}", 1, "NVIDIA-A30-MIG-1g.6gb", priority=10) for i in range(7)],
    }
    snapshot = parse_snapshot(data)
    plan = make_plan(snapshot, PlanPolicy(), "optimal")
    assert plan_problems(snapshot, plan, PlanPolicy()) == []
    assert [g.reconfigure for g in plan.gpus] == [False, True]
    assert plan.evictions == [] and plan.objectives.served_pods == 6
    held = {(0, 0), (0, 1)}
    assert not held & {(d.gpu, d.start) for p in plan.placements for d in p.devices}


def test_a_node_already_holding_several_profiles_offers_nothing_until_it_is_made_whole() -> None:
    """Free 1g.6gb next to a free 2g.12gb is MIG-INVALID: the pod is served only once both GPUs hold 1g.6gb."""
    gpus = [_gpu(0, ("1g.6gb", 0, None)), _gpu(1, ("2g.12gb", 0, None))]
    data = {"nodes": [{"name": "n0", "labels": SINGLE, "gpus": gpus}], "pods": []}
    data["pods"] = [_single_pod("w/p", 1, "NVIDIA-A30-MIG-1g.6gb")]
    snapshot = parse_snapshot(data)
    for policy in ("optimal", "greedy"):
        plan = make_plan(snapshot, PlanPolicy(), policy)
        assert plan.placements, policy
        assert _profiles_after(snapshot, plan, "n0") == [{"1g.6gb"}, {"1g.6gb"}], policy
    capped = make_plan(snapshot, PlanPolicy(max_reconfigurations=1), "optimal")
    assert capped.placements == [] and not any(g.reconfigure for g in capped.gpus)


def test_validation_rejects_a_plan_that_leaves_a_single_strategy_node_with_two_profiles() -> None:
    snapshot = parse_snapshot({**MIXED_PROFILE_TRAP, "running": [{"name": "run/a", "priority": 10}]})
    plan = make_plan(snapshot, PlanPolicy(), "optimal")
    kept = {"target": {"4g.24gb": 1}, "reconfigure": False, "evict": [], "layout": [("4g.24gb", 0)]}
    broken = plan.model_copy(update={"gpus": [replace(g, **kept) if g.index == 0 else g for g in plan.gpus]})
    problems = plan_problems(snapshot, broken, PlanPolicy())
    assert any("single-strategy node would hold" in p for p in problems)


# --- the property ---------------------------------------------------------------------------------------------

_MODELS = {"A30": "NVIDIA-A30", "A100-40GB": "NVIDIA-A100-SXM4-40GB"}


def _plain(model_key: str) -> list[str]:
    return [p.name for p in load_catalog().model(model_key).profiles if "+" not in p.name]


@st.composite
def _single_node(draw: st.DrawFn, name: str, running: list[dict[str, Any]]) -> dict[str, Any]:
    """A single-strategy node whose GPUs hold one profile (sometimes partly created, or several on purpose)."""
    model_key = draw(st.sampled_from(sorted(_MODELS)))
    model = load_catalog().model(model_key)
    profile = draw(st.sampled_from(_plain(model_key)))
    invalid = draw(st.integers(0, 5)) == 0
    gpus = []
    for index in range(draw(st.integers(1, 3))):
        allowed = _plain(model_key) if invalid else [profile]
        layout = draw(st.sampled_from(maximal_layouts(model, allowed)))
        instances = []
        for inst in layout:
            if invalid or draw(st.integers(0, 4)):  # sometimes an instance is not created
                holder = None
                if draw(st.booleans()):
                    holder = f"run/{name}-{index}-{inst.start}"
                    priority = draw(st.sampled_from(PRIORITIES))
                    running.append({"name": holder, "priority": priority, "evictable": draw(st.integers(0, 5)) > 0})
                instances.append((inst.profile, inst.start, holder))
        gpus.append(_gpu(index, *instances, model=model_key))
    labels = {**SINGLE, PRODUCT_LABEL: f"{_MODELS[model_key]}-MIG-{profile}", "zone": draw(st.sampled_from("ab"))}
    return {"name": name, "labels": labels, "gpus": gpus}


@st.composite
def single_strategy_snapshots(draw: st.DrawFn) -> tuple[dict[str, Any], PlanPolicy]:
    running: list[dict[str, Any]] = []
    nodes = [draw(_single_node(f"s{i}", running)) for i in range(draw(st.integers(1, 4)))]
    if draw(st.booleans()):  # a mixed-strategy node beside them
        nodes.append({"name": "m0", "gpus": [_gpu(0, model="A30"), _gpu(1, model="A30")]})
    pods = []
    for i in range(draw(st.integers(1, 6))):
        priority = draw(st.sampled_from(PRIORITIES))
        if draw(st.integers(0, 4)):
            model_key = draw(st.sampled_from(sorted(_MODELS)))
            product = f"{_MODELS[model_key]}-MIG-{draw(st.sampled_from(_plain(model_key)))}"
            pod = _single_pod(f"p/{i}", draw(st.integers(1, 4)), product, priority)
        else:
            profiles = draw(st.lists(st.sampled_from(_plain("A30")), min_size=1, max_size=2, unique=True))
            requests = {f"nvidia.com/mig-{p}": draw(st.integers(1, 2)) for p in profiles}
            pod = {"name": f"p/{i}", "requests": requests, "priority": priority}
        if draw(st.integers(0, 3)) == 0:
            pod["node_selector"] = {**pod.get("node_selector", {}), "zone": "a"}
        pods.append(pod)
    policy = PlanPolicy(
        max_evictions=draw(st.sampled_from([None, 0, 1, 3])),
        max_reconfigurations=draw(st.sampled_from([None, 1, 2, 4])),
        protect_priority=draw(st.sampled_from([100, 1000])),
    )
    return {"nodes": nodes, "pods": pods, "running": running}, policy


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(single_strategy_snapshots())
def test_no_plan_leaves_a_single_strategy_node_with_more_than_one_profile(
    case: tuple[dict[str, Any], PlanPolicy],
) -> None:
    raw, policy = case
    snapshot = parse_snapshot(raw)
    plans = {name: make_plan(snapshot, policy, name) for name in ("optimal", "greedy")}
    for name, plan in plans.items():
        assert plan_problems(snapshot, plan, policy) == [], name
        placed_on = {p.node for p in plan.placements}
        for node in snapshot.nodes:
            if node.strategy != "single":
                continue
            before = [{i.profile for i in g.instances} for g in sorted(node.gpus, key=lambda g: g.index)]
            after = _profiles_after(snapshot, plan, node.name)
            touched = node.name in placed_on or any(g.reconfigure for g in plan.gpus if g.node == node.name)
            if len(set().union(*before)) <= 1:
                assert len(set().union(*after)) <= 1, (name, node.name, after)
            if touched:
                assert len(set().union(*after)) == 1 and all(after), (name, node.name, after)
    assert plans["optimal"].objective >= plans["greedy"].objective
