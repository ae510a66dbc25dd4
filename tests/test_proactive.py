"""The proactive policy: the optimal plan for pending pods, then idle GPUs reshaped for forecast demand, never
evicting for a forecast; and the controller's arrival forecast that feeds it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ortools.sat.python import cp_model

from nvidia_protocol.labels import MIG_CONFIG_LABEL, MIG_STATE_LABEL
from optimizer.controller.actuator import ActuationSettings
from optimizer.controller.forecast import ArrivalForecast, ForecastSettings, poisson_quantile
from optimizer.controller.reconcile import ControllerSettings
from optimizer.metrics.exporter import MetricsObserver
from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from simulations.twin import Twin
from simulations.twin.state import PodPhase
from solver.cpsat import GeometryModel
from solver.demand import key_compute_slices
from solver.hint import greedy_answer
from solver.plan import PlanPolicy
from solver.planner import make_plan
from solver.policies.greedy import baseline
from solver.problem import build_problem
from solver.snapshot import (
    ClusterSnapshot,
    ForecastDemand,
    GpuState,
    InstanceState,
    NodeState,
    PendingPod,
    parse_snapshot,
)
from solver.timing import PlanClock
from solver.validate import plan_problems
from tests.controller_fixtures import mig_controller

ONE_G = {"nvidia.com/mig-1g.5gb": 1}


def _whole_gpus(nodes: int, gpus: int = 2, held: set[tuple[int, int]] = frozenset()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    return [
        {
            "name": f"n{n}",
            "gpus": [
                {
                    "index": g,
                    "model": "A100-SXM4-40GB",
                    "instances": [{"profile": "7g.40gb", "start": 0, "pod": _holder(n, g, held)}],
                }
                for g in range(gpus)
            ],
        }
        for n in range(nodes)
    ]


def _holder(node: int, gpu: int, held: set[tuple[int, int]]) -> str | None:
    return f"t/run-{node}-{gpu}" if (node, gpu) in held else None


def test_idle_gpus_are_reshaped_for_forecast_demand_and_marked() -> None:
    snapshot = parse_snapshot(
        {
            "nodes": _whole_gpus(2),
            "pods": [{"name": "t/a", "requests": {"nvidia.com/mig-3g.20gb": 1}}],
            "forecast": [{"requests": ONE_G, "count": 6}],
        }
    )
    optimal = make_plan(snapshot, PlanPolicy(), "optimal")
    plan = make_plan(snapshot, PlanPolicy(), "proactive")
    assert plan.policy == "proactive" and plan.placements == optimal.placements
    shaped = [g for g in plan.gpus if g.forecast]
    assert len(shaped) == 1 and shaped[0].reconfigure and shaped[0].target.get("1g.5gb", 0) >= 6
    assert not any(g.forecast for g in optimal.gpus)
    assert any("proactive: 1 idle GPUs reshaped for forecast demand (6× mig-1g.5gb)" in n for n in plan.notes)
    assert plan.objectives.reconfigured_gpus == optimal.objectives.reconfigured_gpus + 1


def test_nothing_is_evicted_or_reshaped_under_a_pod_for_a_forecast() -> None:
    held = {(0, 0), (0, 1), (1, 0)}
    snapshot = parse_snapshot(
        {
            "nodes": _whole_gpus(2, held=held),
            "running": [{"name": f"t/run-{n}-{g}", "priority": -5} for n, g in held],
            "forecast": [{"requests": ONE_G, "count": 50}],
        }
    )
    plan = make_plan(snapshot, PlanPolicy(forecast_share=1.0), "proactive")
    assert not plan.evictions
    assert [(g.node, g.index) for g in plan.gpus if g.reconfigure] == [("n1", 1)]


def test_the_share_caps_what_is_reshaped() -> None:
    snapshot = parse_snapshot({"nodes": _whole_gpus(4), "forecast": [{"requests": ONE_G, "count": 100}]})
    assert sum(g.forecast for g in make_plan(snapshot, PlanPolicy(forecast_share=0.0), "proactive").gpus) == 0
    quarter = make_plan(snapshot, PlanPolicy(forecast_share=0.25), "proactive")
    assert sum(g.forecast for g in quarter.gpus) == 2  # 8 GPUs × 7 slices × 0.25 = 14 one-slice pods: 2 GPUs' worth
    assert sum(g.forecast for g in make_plan(snapshot, PlanPolicy(forecast_share=1.0), "proactive").gpus) == 8


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    share=st.sampled_from([0.2, 0.5, 1.0]),
    counts=st.lists(st.integers(1, 20), max_size=3),
)
def test_proactive_plans_pending_pods_as_optimal_does(seed: int, share: float, counts: list[int]) -> None:
    spec = ClusterSpec(nodes=8, gpus_per_node=2, pending_pods=20, used_fraction=0.5, seed=seed)
    snapshot = parse_snapshot(generate_snapshot(spec))
    shapes = [{"nvidia.com/mig-1g.10gb": 1}, {"nvidia.com/mig-2g.20gb": 1}, {"nvidia.com/mig-3g.40gb": 1}]
    forecast = [ForecastDemand(requests=shapes[i], count=c) for i, c in enumerate(counts)]
    snapshot = snapshot.model_copy(update={"forecast": forecast})
    policy = PlanPolicy(forecast_share=share, time_limit_s=5)
    optimal = make_plan(snapshot, policy, "optimal")
    plan = make_plan(snapshot, policy, "proactive")
    assert plan_problems(snapshot, plan, policy) == []
    assert plan.placements == optimal.placements and plan.evictions == optimal.evictions
    assert {(g.node, g.index) for g in plan.gpus if g.reconfigure and not g.forecast} == {
        (g.node, g.index) for g in optimal.gpus if g.reconfigure
    }
    gpus = {(n.name, g.index): g for n in snapshot.nodes for g in n.gpus}
    shaped = [g for g in plan.gpus if g.forecast]
    assert all(not gpus[g.node, g.index].holders and not g.evict for g in shaped)
    idle_slices = sum(
        gpus[g.node, g.index].gpu_model.compute_slices
        for g in optimal.gpus
        if not g.reconfigure and not gpus[g.node, g.index].holders
    )
    used = sum(key_compute_slices(p) * c for g in shaped for p, c in g.target.items())
    assert not shaped or used <= idle_slices


def test_poisson_quantile() -> None:
    assert poisson_quantile(0.0, 0.9) == 0
    assert poisson_quantile(0.05, 0.9) == 0  # P(0) = 0.95
    assert poisson_quantile(0.5, 0.9) == 1  # P(≤1) = 0.91
    assert poisson_quantile(4.0, 0.9) == 7  # P(≤6) = 0.889, P(≤7) = 0.949
    assert 1000 + 1.28 * 31 <= poisson_quantile(1000.0, 0.9) <= 1000 + 1.29 * 32 + 1


def _pending(*names: str, requests: dict[str, int] = ONE_G) -> ClusterSnapshot:
    return ClusterSnapshot(pods=[PendingPod(name=n, requests=requests) for n in names])


def test_the_forecast_counts_arrivals_and_forgets_them() -> None:
    forecast = ArrivalForecast(ForecastSettings(half_life_s=1800, lead_time_s=300, quantile=0.9))
    forecast.observe(0.0, _pending(*(f"old-{i}" for i in range(50))))  # pending at start: no arrivals
    assert forecast.demand(0.0) == []
    for minute in range(1, 121):  # one pod every minute for two hours
        forecast.observe(minute * 60.0, _pending(f"p-{minute}"))
    steady = forecast.demand(120 * 60.0)
    assert [d.requests for d in steady] == [ONE_G] and 5 <= steady[0].count <= 10  # ~5 per 5 min, 90th percentile
    assert forecast.demand(120 * 60.0 + 6 * 3600.0) == []  # six hours with no arrival: forgotten


def test_a_pod_bound_at_once_is_an_arrival_and_single_strategy_or_cpu_pods_are_not() -> None:
    forecast = ArrivalForecast()
    forecast.observe(0.0, ClusterSnapshot())
    gpu = GpuState(index=0, model="A100-40GB", instances=[InstanceState(profile="3g.20gb", start=4, pod="t/bound")])
    bound = ClusterSnapshot(nodes=[NodeState(name="n", gpus=[gpu])], pods=_pending("cpu", requests={"cpu": 1}).pods)
    forecast.observe(60.0, bound)
    assert [(d.requests, d.count) for d in forecast.demand(60.0)] == [({"nvidia.com/mig-3g.20gb": 1}, 1)]
    single = NodeState(name="s", labels={"nvidia.com/mig.strategy": "single"}, gpus=[gpu.model_copy()])
    quiet = ArrivalForecast()
    quiet.observe(0.0, ClusterSnapshot())
    quiet.observe(60.0, ClusterSnapshot(nodes=[single]))
    assert quiet.demand(60.0) == []


def test_the_controller_reshapes_an_idle_gpu_ahead_of_a_recurring_profile() -> None:
    """3g.20gb pods arrive every 4 minutes and run an hour: once the first GPU is full, the second is split for
    them before the next one arrives, so it is bound at once; nothing is evicted."""
    config = (
        "version: v1\nmig-configs:\n  all-7g:\n    - devices: all\n      mig-enabled: true\n"
        "      mig-devices: {7g.40gb: 1}\n"
    )
    whole = [InstanceState(profile="7g.40gb", start=0)]
    gpus = [GpuState(index=g, model="A100-40GB", instances=whole) for g in range(2)]
    node = NodeState(name="n0", labels={MIG_CONFIG_LABEL: "all-7g", MIG_STATE_LABEL: "success"}, gpus=gpus)
    twin = Twin.from_snapshot(ClusterSnapshot(nodes=[node]), config)
    settings_ = ControllerSettings.model_validate(
        {
            "mode": "enforce", "planner": "proactive", "batch_idle_s": 0, "batch_timeout_s": 0,
            "actuation": ActuationSettings(), "forecast": {"half_life_s": 3600, "lead_time_s": 600},
        }
    )  # fmt: skip
    observer = MetricsObserver()
    controller = mig_controller(twin, settings_, observer=observer)
    plans = []
    for step in range(240):  # 20 minutes
        if step % 48 == 0:
            twin.add_pod(f"t/p{step}", {"nvidia.com/mig-3g.20gb": 1}, duration_s=3600)
        plan = controller.tick()
        if plan is not None:
            plans.append(plan)
        twin.advance(5.0)
    assert any(g.forecast for p in plans for g in p.gpus)
    assert twin.evictions == []
    assert b"migopt_plan_forecast_reconfigurations" in observer.exposition()
    assert all(twin.pod(f"t/p{s}").phase == PodPhase.RUNNING for s in range(0, 192, 48))


@pytest.mark.parametrize("planner", ["optimal", "greedy"])
def test_other_planners_ignore_the_forecast(planner: str) -> None:
    settings_ = ControllerSettings(planner=planner)
    assert not settings_.plans_for_forecast


def test_among_equally_good_targets_the_one_leaving_room_for_expected_demand_wins() -> None:
    base: dict[str, Any] = {
        "nodes": _whole_gpus(1, gpus=1),
        "pods": [{"name": f"t/a{i}", "requests": ONE_G} for i in range(2)],
    }
    today = make_plan(parse_snapshot(base), PlanPolicy(), "optimal")
    assert [g.target for g in today.gpus] == [{"1g.5gb": 7}]
    expecting = parse_snapshot({**base, "forecast": [{"requests": {"nvidia.com/mig-3g.20gb": 1}, "count": 1}]})
    plan = make_plan(expecting, PlanPolicy(), "optimal")
    assert [g.target for g in plan.gpus] == [{"3g.20gb": 1, "1g.5gb": 4}]
    assert plan.objectives.served_weight == today.objectives.served_weight
    assert plan.objectives.reconfigured_gpus == today.objectives.reconfigured_gpus


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), counts=st.lists(st.integers(1, 10), min_size=1, max_size=3))
def test_the_expected_demand_term_ranks_below_served_demand_and_disruption(seed: int, counts: list[int]) -> None:
    spec = ClusterSpec(nodes=4, gpus_per_node=2, pending_pods=10, used_fraction=0.5, seed=seed)
    snapshot = parse_snapshot(generate_snapshot(spec))
    shapes = [{"nvidia.com/mig-1g.10gb": 1}, {"nvidia.com/mig-3g.40gb": 1}, {"nvidia.com/mig-2g.20gb": 1}]
    forecast = [ForecastDemand(requests=shapes[i], count=c) for i, c in enumerate(counts)]
    policy = PlanPolicy(time_limit_s=10)
    expecting = snapshot.model_copy(update={"forecast": forecast})
    plan = make_plan(expecting, policy, "optimal")
    assert plan_problems(expecting, plan, policy) == []
    # the order holds for the integer program's terms; the plan's own figures can differ by what disaggregation
    # repairs (a several-device pod re-homed on a GPU re-targeted for it), which no objective term steers
    today, expected = _first_stage(snapshot, policy), _first_stage(expecting, policy)
    if today is not None and expected is not None:
        assert expected == today


def _first_stage(snapshot: ClusterSnapshot, policy: PlanPolicy) -> tuple[int, int, int] | None:
    """Served weight, evicted weight and GPUs reconfigured of the aggregated answer, when proven optimal."""
    problem = build_problem(snapshot, policy)
    answer = GeometryModel(problem).solve(policy.time_limit_s)
    if answer is None or not answer.proven_optimal:
        return None
    units = problem.units
    evicted = sum(units[u].evict_weight * count for u, count in answer.reconfigured.items())
    gpus = sum(units[u].gpus_per_member * count for u, count in answer.reconfigured.items())
    return answer.objective, evicted, gpus


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), counts=st.lists(st.integers(1, 20), min_size=1, max_size=3))
def test_with_a_forecast_the_greedy_plan_is_a_whole_solution_to_start_from(seed: int, counts: list[int]) -> None:
    """CP-SAT's fallback hint sets every variable, the forecast's room included, and is feasible as it stands:
    a hint missing a few variables left CP-SAT unable to start from it, and forecast plans fell back to greedy."""
    spec = ClusterSpec(nodes=8, gpus_per_node=2, pending_pods=20, used_fraction=0.5, seed=seed)
    shapes = [{"nvidia.com/mig-1g.10gb": 1}, {"nvidia.com/mig-2g.20gb": 1}, {"nvidia.com/mig-3g.40gb": 1}]
    forecast = [ForecastDemand(requests=shapes[i], count=c) for i, c in enumerate(counts)]
    snapshot = parse_snapshot(generate_snapshot(spec)).model_copy(update={"forecast": forecast})
    problem = build_problem(snapshot, PlanPolicy())
    if not problem.demands:
        return
    model = GeometryModel(problem)
    model.hint(greedy_answer(problem, baseline(problem, PlanClock(5.0)).decisions), allocation=True)
    hinted = set(model.model.proto.solution_hint.vars)
    assert hinted == set(range(len(model.model.proto.variables)))
    solver = cp_model.CpSolver()
    solver.parameters.fix_variables_to_their_hinted_value = True
    solver.parameters.num_workers = 1
    assert solver.solve(model.model) in (cp_model.OPTIMAL, cp_model.FEASIBLE)
