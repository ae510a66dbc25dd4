"""The metrics exporter: what the controller's snapshots, plans and events become as `migopt_*` series."""

from __future__ import annotations

import requests

from nvidia_protocol.labels import MIG_STATE_LABEL
from optimizer.controller.reconcile import ControllerSettings
from optimizer.metrics.exporter import MetricsObserver, serve_http
from optimizer.usage.rightsizing import Recommendation
from simulations.engine import run_policy, workload_pods
from simulations.scenario import ClusterShape, Scenario, SyntheticSource
from simulations.workloads import SyntheticWorkload
from tests.controller_fixtures import mig_controller
from tests.usage_fixtures import busy_cluster, drive, first_recommended_plan


def _value(observer: MetricsObserver, name: str, **labels: str) -> float | None:
    return observer.registry.get_sample_value(name, labels)


def test_a_run_that_evicts_and_reconfigures_is_counted_and_its_phases_shown() -> None:
    twin, observer = busy_cluster(), MetricsObserver()
    drive(twin, mig_controller(twin, ControllerSettings(mode="enforce"), observer=observer))
    assert _value(observer, "migopt_evictions_total", outcome="evicted") == 1
    assert _value(observer, "migopt_evictions_total", outcome="blocked") == 0
    assert _value(observer, "migopt_reconfigurations_total", outcome="started") == 1
    assert _value(observer, "migopt_reconfigurations_total", outcome="succeeded") == 1
    assert _value(observer, "migopt_planned_evictions_total") == 1
    assert _value(observer, "migopt_planned_reconfigurations_total") == 1
    assert _value(observer, "migopt_events_total", reason="MigPlanned") == 1
    assert _value(observer, "migopt_node_actuation_phase", node="node-0", phase="done") == 1
    assert _value(observer, "migopt_node_actuation_phase", node="node-0", phase="applying") == 0
    assert _value(observer, "migopt_nodes_actuating") == 0
    assert _value(observer, "migopt_node_mig_config_failed", node="node-0") == 0
    assert _value(observer, "migopt_solver_duration_seconds_count") == _value(
        observer, "migopt_plans_total", status="optimal"
    )
    current = dict(devices="7g.80gb=1", gpu="0", model="A100-80GB", node="node-0", state="current")
    assert _value(observer, "migopt_gpu_geometry_info", **current) == 1
    # the evicted pod's replacement is pending: demand by profile
    assert _value(observer, "migopt_pending_pods") == 1
    assert _value(observer, "migopt_pending_demand_devices", profile="1g.10gb") == 1


def test_the_first_plan_shows_planned_next_to_current_geometry_and_its_gains() -> None:
    twin, observer = busy_cluster(), MetricsObserver()
    first_recommended_plan(twin, mig_controller(twin, ControllerSettings(mode="recommend"), observer=observer))
    gpu0 = dict(gpu="0", model="A100-80GB", node="node-0")
    assert _value(observer, "migopt_gpu_geometry_info", devices="1g.10gb=7", state="current", **gpu0) == 1
    assert _value(observer, "migopt_gpu_geometry_info", devices="7g.80gb=1", state="planned", **gpu0) == 1
    assert _value(observer, "migopt_node_instances", node="node-0", profile="7g.80gb", state="planned") == 1
    assert _value(observer, "migopt_node_instances", node="node-0", profile="1g.10gb", state="current") == 7
    configs = [s for m in observer.registry.collect() if m.name == "migopt_node_config_info" for s in m.samples]
    by_state = {s.labels["state"]: s.labels["config"] for s in configs}
    assert by_state["current"] != by_state["planned"] and by_state["planned"].startswith("migopt-")
    assert _value(observer, "migopt_plan_pods_served") == 1
    assert _value(observer, "migopt_plan_evictions") == 1 and _value(observer, "migopt_plan_reconfigurations") == 1
    assert _value(observer, "migopt_solver_info", status="optimal", policy="optimal") == 1
    assert _value(observer, "migopt_solver_gap_ratio") == 0
    assert _value(observer, "migopt_pending_demand_devices", profile="7g.80gb") == 1
    assert _value(observer, "migopt_evictions_total", outcome="evicted") == 0  # recommend mode acts on nothing


def test_mig_manager_failure_is_a_per_node_flag_and_a_count() -> None:
    twin, observer = busy_cluster(), MetricsObserver()
    twin.node("node-0").labels[MIG_STATE_LABEL] = "failed"
    observer.snapshot_taken(twin.snapshot(), twin.now(), {})
    assert _value(observer, "migopt_node_mig_config_failed", node="node-0") == 1
    assert _value(observer, "migopt_mig_config_failed_nodes") == 1


def _rec(pod: str, freed: int, confident: bool = True) -> Recommendation:
    return Recommendation(
        pod=pod, node="n", gpu=0, gi=1, model="A100-80GB", current_profile="7g.80gb", recommended_profile="1g.10gb",
        current_slices=7, recommended_slices=7 - freed, slices_freed=freed, fb_needed_mib=1.0, slices_needed=0.5,
        samples=100, window_s=3600, percentile=0.95, confident=confident,
    )  # fmt: skip


def test_rightsizing_series_are_capped_most_freed_first() -> None:
    observer = MetricsObserver(rightsizing_cap=2)
    recs = [_rec("ns/a", 1), _rec("ns/b", 6), _rec("ns/c", 3), _rec("ns/d", 0), _rec("ns/e", 5, confident=False)]
    observer.rightsizing_updated(recs)
    shown = [
        s for m in observer.registry.collect() if m.name == "migopt_rightsizing_freeable_slices" for s in m.samples
    ]
    assert [(s.labels["namespace"], s.labels["pod"], s.value) for s in shown] == [("ns", "b", 6), ("ns", "c", 3)]
    assert _value(observer, "migopt_rightsizing_recommendations") == 3
    assert _value(observer, "migopt_rightsizing_total_freeable_slices") == 10
    assert _value(observer, "migopt_rightsizing_omitted") == 1
    observer.rightsizing_updated([])
    assert _value(observer, "migopt_rightsizing_freeable_slices", namespace="ns", pod="b") is None


def test_leader_and_usage_gauges() -> None:
    observer = MetricsObserver()
    assert _value(observer, "migopt_leader") == 0 and _value(observer, "migopt_usage_available") == 0
    observer.set_leader(True)
    observer.usage_status(True, None)
    assert _value(observer, "migopt_leader") == 1 and _value(observer, "migopt_usage_available") == 1


def test_serve_http_answers_metrics_health_and_readiness() -> None:
    observer = MetricsObserver()
    ready = [False]
    server = serve_http(0, observer.registry, healthy=lambda: True, ready=lambda: ready[0], host="127.0.0.1")
    try:
        metrics = requests.get(f"{server.url}/metrics", timeout=5)
        assert metrics.status_code == 200 and "migopt_plans_total" in metrics.text
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
        assert requests.get(f"{server.url}/readyz", timeout=5).status_code == 503
        ready[0] = True
        assert requests.get(f"{server.url}/readyz", timeout=5).status_code == 200
        assert requests.get(f"{server.url}/nothing", timeout=5).status_code == 404
    finally:
        server.stop()


def test_the_simulation_engine_passes_the_observer_to_its_controller() -> None:
    scenario = Scenario(
        cluster=ClusterShape(nodes=1, gpus_per_node=2, models=["A100-80GB"]),
        workload=SyntheticSource(
            spec=SyntheticWorkload(
                arrival_rate_per_s=1 / 60,
                duration_mean_s=600,
                profile_mix={"1g.10gb": 1, "7g.80gb": 1},
                horizon_s=1800,
                seed=3,
            )
        ),
        horizon_s=1800,
        policies=["greedy"],
    )
    observer = MetricsObserver()
    pods = workload_pods(scenario)
    result = run_policy(scenario, "greedy", pods, observer=observer)
    made = sum(_value(observer, "migopt_plans_total", status=s) or 0 for s in ("greedy", "empty", "greedy-fallback"))
    assert made == result.plans > 0
    assert _value(observer, "migopt_snapshot_timestamp_seconds") == 1800
