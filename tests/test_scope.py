"""Scope: nodes outside the managed-nodes selector (or marked unmanaged) are never changed, and targets stay inside
each model's allowlist, whichever planner plans; their demand is still explained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migopt.snapshot_io import load_scope
from nvidia_protocol.labels import MIG_CONFIG_LABEL, MIG_STATE_LABEL
from optimizer.controller.actuator import ActuationSettings
from optimizer.controller.reconcile import ControllerSettings
from simulations.scenario import ControllerKnobs
from simulations.synthetic_cluster import POOL_LABEL, ClusterSpec, generate_snapshot
from simulations.twin import Twin
from simulations.twin.state import PodPhase
from solver.catalog import get_model
from solver.errors import MigoptError
from solver.plan import Plan, PlanPolicy
from solver.planner import make_plan
from solver.scope import OUTSIDE_SELECTOR, PlanScope
from solver.snapshot import ClusterSnapshot, GpuState, InstanceState, NodeState, parse_snapshot
from solver.validate import plan_problems
from tests.cli_runner import run_cli
from tests.controller_fixtures import mig_controller

POLICIES = ["greedy", "optimal"]
A100 = "A100-SXM4-40GB"


def _node(name: str, pool: str, *instances: tuple[str, int, str | None]) -> dict[str, Any]:
    gpu = {"index": 0, "model": A100, "instances": [{"profile": p, "start": s, "pod": h} for p, s, h in instances]}
    return {"name": name, "labels": {"pool": pool}, "gpus": [gpu]}


def _snapshot(nodes: list[dict[str, Any]], pods: list[dict[str, Any]], running: list[str] = ()) -> ClusterSnapshot:  # type: ignore[assignment]
    return parse_snapshot({"nodes": nodes, "pods": pods, "running": [{"name": r} for r in running]})


def _pod(name: str, profile: str, priority: int = 0) -> dict[str, Any]:
    return {"name": name, "requests": {f"nvidia.com/mig-{profile}": 1}, "priority": priority}


MANAGED_A = PlanScope.model_validate({"managedNodes": {"matchLabels": {"pool": "a"}}})


def _reconfigured(plan: Plan) -> set[str]:
    return {g.node for g in plan.gpus if g.reconfigure}


@pytest.mark.parametrize("policy", POLICIES)
def test_a_node_outside_the_selector_is_kept_but_its_free_devices_serve(policy: str) -> None:
    snapshot = _snapshot(
        [_node("kept", "b", ("1g.5gb", 0, None), ("3g.20gb", 4, None)), _node("free", "a")],
        [_pod("t/small", "1g.5gb"), _pod("t/big", "7g.40gb")],
    )
    plan = make_plan(snapshot, PlanPolicy(scope=MANAGED_A), policy)
    assert "kept" not in _reconfigured(plan)
    assert {p.pod: p.node for p in plan.placements} == {"t/small": "kept", "t/big": "free"}
    assert any("not managed by migopt (outside the managed-nodes selector): kept" in n for n in plan.notes)


@pytest.mark.parametrize("policy", POLICIES)
def test_demand_only_an_unmanaged_node_could_serve_is_explained(policy: str) -> None:
    snapshot = _snapshot([_node("kept", "b", ("3g.20gb", 0, None), ("3g.20gb", 4, None))], [_pod("t/big", "7g.40gb")])
    unscoped = make_plan(snapshot, PlanPolicy(), policy)
    assert unscoped.placements  # without a scope the planner rebuilds the GPU
    plan = make_plan(snapshot, PlanPolicy(scope=MANAGED_A), policy)
    assert not plan.placements and not _reconfigured(plan)
    assert [u.pod for u in plan.unplaced] == ["t/big"]
    assert "migopt may not change (1 GPUs outside the managed nodes" in plan.unplaced[0].reason


@pytest.mark.parametrize("policy", POLICIES)
def test_a_node_the_snapshot_marks_unmanaged_is_kept_whatever_the_selector(policy: str) -> None:
    snapshot = _snapshot([_node("dra", "a")], [_pod("t/small", "1g.5gb")])
    marked = snapshot.model_copy(
        update={"nodes": [snapshot.nodes[0].model_copy(update={"unmanaged": "GPUs managed by the DRA driver"})]}
    )
    assert _reconfigured(make_plan(snapshot, PlanPolicy(scope=MANAGED_A), policy)) == {"dra"}
    plan = make_plan(marked, PlanPolicy(scope=MANAGED_A), policy)
    assert not _reconfigured(plan) and [u.pod for u in plan.unplaced] == ["t/small"]
    assert any("GPUs managed by the DRA driver" in n for n in plan.notes)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_geometry_allowlist_is_the_only_target(policy: str) -> None:
    scope = PlanScope.model_validate({"models": {A100: {"geometries": [{"1g.5gb": 4, "3g.20gb": 1}, {"7g.40gb": 1}]}}})
    snapshot = _snapshot([_node("n", "a")], [_pod(f"t/p{i}", "1g.5gb") for i in range(6)])
    plan = make_plan(snapshot, PlanPolicy(scope=scope), policy)
    assert [g.target for g in plan.gpus] == [{"1g.5gb": 4, "3g.20gb": 1}]
    assert len(plan.placements) == 4 and len(plan.unplaced) == 2
    assert any("targets for A100-40GB limited to 2 allowed geometries" in n for n in plan.notes)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_profile_allowlist_leaves_other_profiles_unserved_and_says_why(policy: str) -> None:
    scope = PlanScope.model_validate({"models": {A100: {"profiles": ["3g.20gb", "7g.40gb"]}}})
    snapshot = _snapshot([_node("n", "a")], [_pod("t/small", "1g.5gb"), _pod("t/mid", "3g.20gb")])
    plan = make_plan(snapshot, PlanPolicy(scope=scope), policy)
    assert [g.target for g in plan.gpus] == [{"3g.20gb": 2}]
    assert [p.pod for p in plan.placements] == ["t/mid"]
    assert "migopt may not change" in plan.unplaced[0].reason


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    managed_pools=st.sets(st.sampled_from(["pool-0", "pool-1", "pool-2"])),
    allow_profiles=st.booleans(),
    policy=st.sampled_from(POLICIES),
)
def test_no_plan_steps_outside_its_scope(seed: int, managed_pools: set[str], allow_profiles: bool, policy: str) -> None:
    spec = ClusterSpec(nodes=12, gpus_per_node=2, pending_pods=40, pools=3, used_fraction=0.4, seed=seed)
    snapshot = parse_snapshot(generate_snapshot(spec))
    models: dict[str, Any] = {}
    if allow_profiles:
        for key in {g.gpu_model.key for n in snapshot.nodes for g in n.gpus}:
            model = get_model(key)
            models[key] = {"profiles": [p.name for p in model.profiles][::2]}
    selector = {"matchExpressions": [{"key": POOL_LABEL, "operator": "In", "values": sorted(managed_pools)}]}
    scope = PlanScope.model_validate({"managedNodes": selector, "models": models})
    policy_ = PlanPolicy(scope=scope, time_limit_s=5)
    plan = make_plan(snapshot, policy_, policy)
    managed = {n.name for n in snapshot.nodes if n.labels[POOL_LABEL] in managed_pools}
    assert _reconfigured(plan) <= managed
    assert not {g.node for g in plan.gpus if g.evict} - managed
    models_by_node = {(n.name, g.index): g.gpu_model for n in snapshot.nodes for g in n.gpus}
    assert all(scope.permits(models_by_node[g.node, g.index], g.target) for g in plan.gpus if g.reconfigure)
    assert plan_problems(snapshot, plan, policy_) == []


def test_validation_rejects_a_plan_that_changes_an_unmanaged_node() -> None:
    snapshot = _snapshot([_node("kept", "b")], [_pod("t/small", "1g.5gb")])
    plan = make_plan(snapshot, PlanPolicy(), "greedy")
    problems = plan_problems(snapshot, plan, PlanPolicy(scope=MANAGED_A))
    assert problems == [f"kept/0: reconfigured, but migopt does not manage it ({OUTSIDE_SELECTOR})"]


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        ({"models": {"Z9000": {"profiles": ["1g.5gb"]}}}, "models['Z9000']: unknown GPU model 'Z9000'"),
        ({"models": {A100: {"profiles": ["9g.99gb"]}}}, "9g.99gb"),
        ({"models": {A100: {"geometries": [{"7g.40gb": 2}]}}}, "is not feasible on A100-40GB"),
        ({"managedNodes": {"matchLabel": {"a": "b"}}}, "managedNodes.matchLabel"),
    ],
)
def test_a_bad_scope_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scope: dict[str, Any], message: str
) -> None:
    path = tmp_path / "scope.yaml"
    path.write_text(json.dumps(scope))
    with pytest.raises(MigoptError) as caught:
        load_scope(path)
    assert "\n" not in str(caught.value)
    snapshot = tmp_path / "snap.yaml"
    snapshot.write_text(json.dumps({"nodes": [_node("n", "a")], "pods": []}))
    result = run_cli(capsys, "plan", "-f", str(snapshot), "--scope", str(path))
    assert result.code == 2 and result.err.count("\n") == 1 and "scope" in result.err


def test_plan_command_takes_a_scope_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snapshot = tmp_path / "snap.yaml"
    nodes = [_node("kept", "b"), _node("free", "a")]
    snapshot.write_text(json.dumps({"nodes": nodes, "pods": [_pod("t/x", "1g.5gb")]}))
    scope = tmp_path / "scope.yaml"
    scope.write_text("managedNodes:\n  matchLabels: {pool: a}\n")
    result = run_cli(capsys, "plan", "-f", str(snapshot), "--scope", str(scope), "-o", "json")
    plan = json.loads(result.out)
    assert result.code == 0 and [g["node"] for g in plan["gpus"] if g["reconfigure"]] == ["free"]
    assert any("kept" in n for n in plan["notes"])


def test_the_controller_never_changes_a_node_outside_the_selector() -> None:
    """On the twin: the pod could be served by either node; the one outside the scope keeps its geometry."""
    config = (
        "version: v1\nmig-configs:\n  all-7g:\n    - devices: all\n      mig-enabled: true\n"
        "      mig-devices: {7g.40gb: 1}\n"
    )
    nodes = [
        NodeState(
            name=name,
            labels={MIG_CONFIG_LABEL: "all-7g", MIG_STATE_LABEL: "success", "pool": pool},
            gpus=[GpuState(index=0, model="A100-40GB", instances=[InstanceState(profile="7g.40gb", start=0)])],
        )
        for name, pool in (("a-kept", "b"), ("b-managed", "a"))
    ]
    twin = Twin.from_snapshot(ClusterSnapshot(nodes=nodes), config)
    for i in range(2):
        twin.add_pod(f"t/p{i}", {"nvidia.com/mig-3g.20gb": 1})
    settings_ = ControllerSettings.model_validate(
        {
            "mode": "enforce", "batch_idle_s": 0, "batch_timeout_s": 0, "actuation": ActuationSettings(),
            "policy": PlanPolicy(scope=MANAGED_A),
        }
    )  # fmt: skip
    controller = mig_controller(twin, settings_)
    for _ in range(120):
        controller.tick()
        twin.advance(5.0)
    assert twin.node("a-kept").labels[MIG_CONFIG_LABEL] == "all-7g"
    assert twin.node("b-managed").labels[MIG_CONFIG_LABEL] != "all-7g"
    assert all(twin.pod(f"t/p{i}").phase == PodPhase.RUNNING for i in range(2))


def test_scenarios_take_the_scope() -> None:
    knobs = ControllerKnobs.model_validate({"scope": {"managedNodes": {"matchLabels": {"pool": "a"}}}})
    assert knobs.scope == MANAGED_A
