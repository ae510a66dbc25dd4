"""How `/metrics` is served: prometheus_client's exposition (OpenMetrics on request, gzip when accepted), no
`*_created` series, the process's own metrics, planned geometry only for what a plan changes, and where the
server listens."""

from __future__ import annotations

import gzip

import pytest
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from migopt.settings import load_settings
from optimizer.controller.reconcile import ControllerSettings
from optimizer.metrics.exporter import MetricsObserver, serve_http
from tests.controller_fixtures import mig_controller
from tests.usage_fixtures import busy_cluster, first_recommended_plan


@pytest.fixture
def observed() -> MetricsObserver:
    """A plan made in recommend mode on a busy two-GPU node: one GPU changes, the other does not."""
    twin, observer = busy_cluster(), MetricsObserver()
    first_recommended_plan(twin, mig_controller(twin, ControllerSettings(mode="recommend"), observer=observer))
    return observer


def test_openmetrics_is_negotiated_and_gzip_used_when_accepted(observed: MetricsObserver) -> None:
    server = serve_http(0, observed.registry, healthy=lambda: True, ready=lambda: True)
    try:
        accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        raw = requests.get(f"{server.url}/metrics", headers={"Accept": accept, "Accept-Encoding": "gzip"}, timeout=5,
                           stream=True)  # fmt: skip
        assert raw.headers["Content-Type"].startswith("application/openmetrics-text")
        assert raw.headers["Content-Encoding"] == "gzip"
        body = gzip.decompress(raw.raw.read()).decode()
        families = {f.name for f in text_string_to_metric_families(body)}  # type: ignore[no-untyped-call]
        assert "migopt_plans" in families and body.rstrip().endswith("# EOF")
        plain = requests.get(f"{server.url}/metrics", headers={"Accept-Encoding": "identity"}, timeout=5)
        assert plain.headers["Content-Type"].startswith("text/plain") and "Content-Encoding" not in plain.headers
        assert "migopt_plans_total" in plain.text
        small = requests.get(f"{server.url}/healthz", headers={"Accept-Encoding": "gzip"}, timeout=5)
        assert small.text == "ok\n" and "Content-Encoding" not in small.headers  # too small to be worth it
    finally:
        server.stop()


def test_no_created_series_and_the_process_metrics_are_there(observed: MetricsObserver) -> None:
    names = {s.name for m in observed.registry.collect() for s in m.samples}
    assert not [n for n in names if n.endswith("_created")]
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"} <= names


def test_planned_geometry_only_for_the_gpus_a_plan_changes(observed: MetricsObserver) -> None:
    plan = observed._plan
    assert plan is not None
    changed = {(g.node, str(g.index)) for g in plan.gpus if g.reconfigure}
    planned = [
        s.labels
        for m in observed.registry.collect()
        if m.name == "migopt_gpu_geometry_info"
        for s in m.samples
        if s.labels["state"] == "planned"
    ]
    assert changed and {(labels["node"], labels["gpu"]) for labels in planned} == changed
    current = [s for m in observed.registry.collect() if m.name == "migopt_gpu_geometry_info" for s in m.samples
               if s.labels["state"] == "current"]  # fmt: skip
    assert len(current) > len(planned)  # every GPU has a current map; only changed ones a planned one


def test_metrics_listen_on_loopback_with_a_kubeconfig_and_everywhere_in_a_pod(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert load_settings(kubeconfig="/tmp/kubeconfig").metrics_host() == "127.0.0.1"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert load_settings().metrics_host() == "0.0.0.0"
    assert load_settings(metrics_bind_address="192.0.2.7").metrics_host() == "192.0.2.7"
