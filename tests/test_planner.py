"""Plans from both policies: valid, explained, deterministic; the optimal one matches a brute-force optimum."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver.catalog import load_catalog
from solver.demand import demands, rejection, weights_for
from solver.geometry import maximal_layouts, maximal_maps
from solver.plan import Plan, PlanPolicy
from solver.planner import make_plan
from solver.policies import optimal
from solver.problem import build_problem
from solver.snapshot import ClusterSnapshot, parse_snapshot
from solver.validate import plan_problems

PRIORITIES = [0, 10, 100]


def _comparable(plan: Plan) -> dict[str, Any]:
    return plan.model_dump(exclude={"solve_seconds", "timings"})


@st.composite
def cluster_specs(draw: st.DrawFn) -> ClusterSpec:
    return ClusterSpec(
        nodes=draw(st.integers(1, 10)),
        gpus_per_node=draw(st.integers(1, 4)),
        pending_pods=draw(st.integers(0, 40)),
        used_fraction=draw(st.sampled_from([0.0, 0.3, 0.6, 0.9])),
        multi_device_fraction=draw(st.sampled_from([0.0, 0.2])),
        selector_fraction=draw(st.sampled_from([0.0, 0.3])),
        pools=draw(st.integers(1, 3)),
        taint_fraction=draw(st.sampled_from([0.0, 0.3])),
        fragmented=draw(st.booleans()),
        seed=draw(st.integers(0, 10_000)),
    )


policies = st.builds(
    PlanPolicy,
    max_evictions=st.sampled_from([None, 0, 2]),
    max_reconfigurations=st.sampled_from([None, 1, 3]),
    protect_priority=st.sampled_from([1000, 100]),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cluster_specs(), policies)
def test_every_plan_is_valid_and_optimal_is_never_worse(spec: ClusterSpec, policy: PlanPolicy) -> None:
    snapshot = parse_snapshot(generate_snapshot(spec))
    greedy = make_plan(snapshot, policy, "greedy")
    optimal = make_plan(snapshot, policy, "optimal")
    for plan in (greedy, optimal):
        assert plan_problems(snapshot, plan, policy) == []
        assert {p.pod for p in plan.placements} | {u.pod for u in plan.unplaced} == {p.name for p in snapshot.pods}
        assert all(u.reason for u in plan.unplaced)
        assert plan.objective <= plan.bound
    assert optimal.objective >= greedy.objective
    assert _comparable(make_plan(snapshot, policy, "optimal")) == _comparable(optimal)


# --- brute force on tiny clusters -------------------------------------------------------------------------------


@st.composite
def tiny_snapshots(draw: st.DrawFn) -> tuple[dict[str, Any], PlanPolicy]:
    model_key = draw(st.sampled_from(["A100-40GB", "A30"]))
    model = load_catalog().model(model_key)
    plain = [p.name for p in model.profiles if "+" not in p.name]
    layouts = maximal_layouts(model, plain)
    nodes, running = [], []
    for n in range(draw(st.integers(1, 2 if model_key == "A100-40GB" else 3))):
        layout = draw(st.sampled_from([[], *layouts]))
        instances = []
        for inst in layout:
            entry: dict[str, Any] = {"profile": inst.profile, "start": inst.start}
            if draw(st.booleans()):
                entry["pod"] = f"run/r{n}-{inst.start}"
                running.append({"name": entry["pod"], "priority": draw(st.sampled_from(PRIORITIES))})
            if draw(st.integers(0, 3)):  # sometimes drop an instance
                instances.append(entry)
        gpu = {"index": 0, "model": model_key, "instances": instances}
        nodes.append({"name": f"n{n}", "labels": {"zone": "ab"[n % 2]}, "gpus": [gpu]})
    pods = []
    for i in range(draw(st.integers(1, 5))):
        pod: dict[str, Any] = {
            "name": f"p/{i}",
            "requests": {f"nvidia.com/mig-{draw(st.sampled_from(plain))}": 1},
            "priority": draw(st.sampled_from(PRIORITIES)),
        }
        if draw(st.integers(0, 4)) == 0:
            pod["node_selector"] = {"zone": "a"}
        pods.append(pod)
    policy = PlanPolicy(
        max_evictions=draw(st.sampled_from([None, 0, 1])),
        max_reconfigurations=draw(st.sampled_from([None, 1])),
        protect_priority=100,
    )
    return {"nodes": nodes, "pods": pods, "running": running}, policy


def brute_force_served(snapshot: ClusterSnapshot, policy: PlanPolicy) -> int:
    """The best priority-weighted service over every combination of keep / any target per GPU.

    Targets are the maps maximal over the profiles pending pods ask for, other than the GPU's current map: a
    reconfiguration to the current map changes nothing (mig-parted skips it), and evicting pods only to hand
    their unchanged devices to others is the scheduler's preemption, not a geometry change.
    """
    pending = demands(snapshot, weights_for(snapshot))
    asked = {k for d in pending for k, _ in d.resources}
    gpus = [(node, gpu) for node in snapshot.nodes for gpu in node.gpus]
    choices = []
    for _, gpu in gpus:
        holders = [snapshot.running_pod(p) for p in gpu.holders]
        options: list[dict[str, int] | None] = [None]
        if all(p.evictable and p.priority < policy.protect_priority for p in holders):
            # a target equal to the current map changes nothing: mig-parted leaves such a GPU alone
            wanted = [p for p in gpu.gpu_model.profile_names if p in asked]
            options += [m for m in maximal_maps(gpu.gpu_model, wanted) if wanted and m != gpu.mig_devices]
        choices.append(options)
    best = 0
    for combo in itertools.product(*choices):
        changed = [i for i, target in enumerate(combo) if target is not None]
        evicted = {p for i in changed for p in gpus[i][1].holders}
        if policy.max_evictions is not None and len(evicted) > policy.max_evictions:
            continue
        if policy.max_reconfigurations is not None and len(changed) > policy.max_reconfigurations:
            continue
        devices: list[tuple[int, str, int | None]] = []  # (gpu, profile, tier: priority a user must exceed)
        for i, target in enumerate(combo):
            _node, gpu = gpus[i]
            if target is None:
                devices += [(i, gpu.gpu_model.profile(x.profile).name, None) for x in gpu.instances if not x.pod]
            else:
                tier = max((snapshot.running_pod(p).priority for p in gpu.holders), default=None)
                devices += [(i, name, tier) for name, count in target.items() for _ in range(count)]
        best = max(best, _best_assignment(pending, devices, gpus))
    return best


def _best_assignment(pending: list[Any], devices: list[tuple[int, str, int | None]], gpus: list[Any]) -> int:
    def fits(demand: Any, device: tuple[int, str, int | None]) -> bool:
        gpu, profile, tier = device
        return (
            demand.resources[0][0] == profile
            and rejection(gpus[gpu][0], demand) is None
            and (tier is None or tier < demand.pod.priority)
        )

    def search(k: int, free: tuple[bool, ...]) -> int:
        if k == len(pending):
            return 0
        result = search(k + 1, free)
        for j, device in enumerate(devices):
            if free[j] and fits(pending[k], device):
                taken = (*free[:j], False, *free[j + 1 :])
                result = max(result, pending[k].weight + search(k + 1, taken))
        return result

    return search(0, tuple(True for _ in devices))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_snapshots())
def test_optimal_matches_brute_force_on_tiny_clusters(case: tuple[dict[str, Any], PlanPolicy]) -> None:
    raw, policy = case
    snapshot = parse_snapshot(raw)
    plan = make_plan(snapshot, policy, "optimal")
    assert plan_problems(snapshot, plan, policy) == []
    assert plan.objective == brute_force_served(snapshot, policy)
    assert plan.status == "optimal" and plan.gap == 0


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), share=st.integers(1, 4))
def test_placed_pods_are_counted_per_pod_group(seed: int, share: int) -> None:
    """What the optimal policy compares with the pods CP-SAT served per group, to re-solve when co-location fell
    short: every group's placed pods, counted from the placements alone."""
    snapshot = parse_snapshot(generate_snapshot(ClusterSpec(nodes=6, pending_pods=40, seed=seed)))
    problem = build_problem(snapshot, PlanPolicy())
    placed = {d.pod.name: [] for d in problem.demands[::share]}
    counted = optimal._achieved(problem, placed)
    for index, group in enumerate(problem.pod_groups):
        assert counted[index] == sum(d.pod.name in placed for d in group.demands)
