"""End to end: the controller drives the twin, Prometheus scrapes migopt's `/metrics` and the twin's dcgm exporter,
right-sizing reads usage back through Prometheus, and every query of the Grafana dashboard returns data. And the
dashboard's own rules: counters only through rate/increase, every query scoped by the `cluster` and `job` variables,
a unit on every panel."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from optimizer.controller.actuator import Phase
from optimizer.controller.reasons import EventReason
from optimizer.controller.reconcile import ControllerSettings
from optimizer.metrics.exporter import EVICTION_OUTCOMES, RECONFIGURATION_OUTCOMES, MetricsObserver, serve_http
from optimizer.usage.prometheus import PrometheusUsage, UsageSettings
from optimizer.usage.rightsizing import RightSizingSettings, recommend
from simulations.twin.dcgm_exporter import DcgmExporter
from solver.plan import PlanStatus
from tests.cli_runner import run_cli
from tests.controller_fixtures import mig_controller
from tests.prometheus_server import PrometheusServer, prometheus
from tests.usage_fixtures import MODEL, busy_cluster, drive

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "migopt.json"
VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$node": ".*",
    "${node}": ".*",
    "$job": ".*",
    "$cluster": ".*",
}
SCOPE = ('job=~"$job"', 'cluster=~"$cluster"')
SELECTOR = re.compile(r"\b(migopt_\w+)(\{[^}]*\})?")
COUNTER = re.compile(r"_(total|bucket|sum|count)$")
LABEL_VALUES = re.compile(r"label_values\((\w+)(\{[^}]*\})?, *(\w+)\)")


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _substituted(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def _raw_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(where, _substituted(expr)) for where, expr in _raw_queries(dashboard)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrometheusServer, MetricsObserver]]:
    twin, observer = busy_cluster(), MetricsObserver()
    drive(twin, mig_controller(twin, ControllerSettings(mode="enforce"), observer=observer))
    observer.set_leader(True)
    metrics = serve_http(0, observer.registry, healthy=lambda: True, ready=lambda: True, host="127.0.0.1")
    dcgm = DcgmExporter(twin, MODEL).serve()
    try:
        targets = {"migopt": f"127.0.0.1:{metrics.port}", "dcgm": f"127.0.0.1:{dcgm.port}"}
        with prometheus(targets, tmp_path_factory.mktemp("prom")) as prom:
            prom.targets_up(2)
            prom.wait_for('count_over_time(DCGM_FI_PROF_GR_ENGINE_ACTIVE{pod="notebook"}[1h]) >= 3')
            prom.wait_for("count_over_time(migopt_plans_total[1h]) >= 3")
            yield prom, observer
    finally:
        metrics.stop()
        dcgm.stop()


def test_the_dashboard_is_well_formed_with_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    titles = [p["title"] for p in _panels(dashboard)]
    assert len(titles) == len(set(titles))
    for panel in _panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    assert len(_queries(dashboard)) >= 20


def test_every_query_is_scoped_by_cluster_and_job_and_reads_counters_as_rates() -> None:
    """A dashboard over several clusters or installs must not add them up; a raw counter is a number since the
    process started, meaningless on a graph; a histogram needs rate() before histogram_quantile()."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("cluster", "job"):
        # "All" is `.*`, which also matches series without the label (a single-cluster Prometheus has none).
        assert variables[name]["includeAll"] is True and variables[name]["allValue"] == ".*"
    assert 'cluster=~"$cluster"' in variables["job"]["definition"]
    assert all(scope in variables["node"]["definition"] for scope in SCOPE)
    for where, expr in _raw_queries(dashboard):
        selectors = SELECTOR.findall(expr)
        assert selectors, where
        for metric, matchers in selectors:
            assert all(scope in matchers for scope in SCOPE), f"{where}: {metric} is not scoped by $cluster and $job"
            if COUNTER.search(metric):
                assert re.search(rf"\b(rate|increase)\({metric}\{{[^}}]*\}}\[[^\]]+\]\)", expr), (
                    f"{where}: counter {metric} outside rate()/increase()"
                )


def test_every_panel_has_a_unit_and_the_gap_its_own_axis() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in _panels(dashboard):
        if panel["type"] != "row":
            assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
    objective = next(p for p in _panels(dashboard) if p["title"] == "Objective, bound and gap")
    gap = next(t["refId"] for t in objective["targets"] if "migopt_solver_gap_ratio" in t["expr"])
    (override,) = [
        o for o in objective["fieldConfig"]["overrides"] if o["matcher"] == {"id": "byFrameRefID", "options": gap}
    ]
    properties = {p["id"]: p["value"] for p in override["properties"]}
    assert properties["unit"] == "percentunit" and properties["custom.axisPlacement"] == "right"
    assert objective["fieldConfig"]["defaults"]["unit"] != "percentunit"  # objective and bound keep the left axis


def test_the_dashboards_label_values_are_the_codes_own() -> None:
    """Outcomes, phases and plan statuses are enums in the code: a dashboard matcher on a value the code never
    exports would show an empty panel forever."""
    known = {
        "outcome": set(EVICTION_OUTCOMES.values()) | set(RECONFIGURATION_OUTCOMES.values()),
        "phase": {p.value for p in Phase},
        "status": {s.value for s in PlanStatus},
        "reason": {r.value for r in EventReason},
    }
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    matchers = [m for _, expr in _queries(dashboard) for m in re.findall(r'(\w+)=~?"([^"]*)"', expr)]
    checked = [(label, value) for label, value in matchers if label in known]
    assert checked, "the dashboard filters on no enum label: this test would check nothing"
    for label, value in checked:
        assert set(value.split("|")) <= known[label], f"{label}={value!r} is not a value the code exports"


def test_every_dashboard_query_returns_data_after_a_simulated_run(
    stack: tuple[PrometheusServer, MetricsObserver],
) -> None:
    prom, observer = stack
    usage = PrometheusUsage(prom.url, UsageSettings(window="10m"), on_status=observer.usage_status)
    recs = recommend(usage.usage(), RightSizingSettings(min_samples=2))
    notebook = next(r for r in recs if r.pod == "team-a/notebook")
    assert (notebook.current_profile, notebook.recommended_profile, notebook.slices_freed) == ("3g.40gb", "1g.10gb", 2)
    observer.rightsizing_updated(recs)
    prom.wait_for('migopt_rightsizing_freeable_slices{pod="notebook"} == 2')
    prom.wait_for("migopt_usage_available == 1")
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric, matchers, label = LABEL_VALUES.fullmatch(variable["definition"]).groups()  # type: ignore[union-attr]
            assert prom.query(_substituted(f"count by ({label}) ({metric}{matchers or ''})")), variable["name"]
    empty = [(where, expr) for where, expr in _queries(dashboard) if not prom.query(expr)]
    assert not empty, f"dashboard queries with no data: {empty}"


def test_recommend_command_reads_prometheus(
    stack: tuple[PrometheusServer, MetricsObserver], capsys: pytest.CaptureFixture[str]
) -> None:
    prom, _ = stack
    result = run_cli(
        capsys, "recommend", "--prometheus", prom.url, "--window", "10m", "--min-samples", "2", "-o", "json"
    )
    assert result.code == 0, result.err
    by_pod = {r["pod"]: r for r in json.loads(result.out)}
    assert by_pod["team-a/notebook"]["recommended_profile"] == "1g.10gb"
    assert by_pod["team-a/notebook"]["confident"] is True
    table = run_cli(capsys, "recommend", "--prometheus", prom.url, "--window", "10m")
    assert table.code == 0 and "team-a/notebook" in table.out


def test_recommend_command_without_prometheus_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "recommend", "--prometheus", "http://127.0.0.1:9", "--window", "1h")
    assert result.code == 1 and result.err.startswith("usage unavailable:") and result.err.count("\n") == 1
    bad = run_cli(capsys, "recommend", "--prometheus", "http://127.0.0.1:9", "--window", "an hour")
    assert bad.code == 2 and "bad window" in bad.err
