"""The UsagePort against a real Prometheus scraping the twin's dcgm-shaped series."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvidia_protocol.labels import PAUSED
from optimizer.metrics.exporter import MetricsObserver
from optimizer.usage.prometheus import PodDevice, PrometheusUsage, UsageSettings, parse_duration
from simulations.twin.cluster import Twin
from simulations.twin.dcgm_exporter import DcgmExporter
from simulations.twin.usage import UsageModel
from solver.catalog import load_catalog
from solver.errors import MigoptError
from tests.prometheus_server import PrometheusServer, prometheus
from tests.usage_fixtures import MODEL, USAGE, twin_a, twin_b, twin_c

MIB = {"3g.40gb": 40192, "7g.80gb": 80384, "1g.6gb": 5952}


class Cluster:
    def __init__(self, prom: PrometheusServer, c: Twin) -> None:
        self.prom = prom
        self.c = c


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    a = DcgmExporter(twin_a(), MODEL, hostname_label="Hostname").serve()
    b = DcgmExporter(twin_b(), MODEL, hostname_label="hostname", framebuffer=False, sm_active=False).serve()
    c_twin = twin_c()
    c = DcgmExporter(c_twin, MODEL).serve()
    targets = {"dcgm-a": f"127.0.0.1:{a.port}", "dcgm-b": f"127.0.0.1:{b.port}", "dcgm-c": f"127.0.0.1:{c.port}"}
    try:
        with prometheus(targets, tmp_path_factory.mktemp("prom")) as prom:
            prom.targets_up(3)
            prom.wait_for(
                'count_over_time(DCGM_FI_PROF_GR_ENGINE_ACTIVE{GPU_I_ID!=""}[1h]) >= 3', lambda r: len(r) >= 9
            )
            yield Cluster(prom, c_twin)
    finally:
        for server in (a, b, c):
            server.stop()


def test_percentiles_come_back_for_every_instance_with_both_hostname_spellings(cluster: Cluster) -> None:
    report = PrometheusUsage(cluster.prom.url, UsageSettings(window="10m", percentile=0.95)).usage()
    assert report.available and report.window_s == 600 and report.percentile == 0.95
    held = {u.pod: u for u in report.instances if u.pod}
    assert set(held) == {p if "/" in p else f"default/{p}" for p in USAGE}
    for pod in ("team-a/notebook", "team-b/train", "team-c/big", "default/solo"):
        usage = held[pod]
        expected = USAGE[pod.removeprefix("default/")]
        assert usage.engine_active == pytest.approx(expected.engine_active)
        assert usage.sm_active == pytest.approx(expected.sm_active)
        mib = MIB[usage.profile]
        assert usage.fb_used_mib == pytest.approx(round(expected.fb_fraction * mib))
        assert usage.fb_total_mib == pytest.approx(mib)
        assert usage.samples >= 3
    notebook = held["team-a/notebook"]
    assert (notebook.node, notebook.gpu, notebook.profile, notebook.model_name) == (
        "node-a",
        0,
        "3g.40gb",
        "NVIDIA A100-SXM4-80GB",
    )
    assert load_catalog().model(notebook.model_name or "").key == "A100-80GB"
    free = [u for u in report.instances if u.node == "node-b" and u.pod is None]
    assert len(free) == 3 and all(u.engine_active == 0 for u in free)


def test_lowercase_hostname_and_missing_framebuffer_series(cluster: Cluster) -> None:
    report = PrometheusUsage(cluster.prom.url, UsageSettings(window="10m")).usage()
    infer = next(u for u in report.instances if u.pod == "team-d/infer")
    assert (infer.node, infer.gpu, infer.profile) == ("node-c", 3, "2g.10gb")
    assert infer.engine_active == pytest.approx(0.2)
    assert infer.fb_used_mib is None and infer.fb_total_mib is None and infer.sm_active is None


def test_pod_devices_map_pods_to_node_gpu_and_gpu_instance(cluster: Cluster) -> None:
    devices = PrometheusUsage(cluster.prom.url).pod_devices()
    by_pod = {d.pod: d for d in devices}
    assert by_pod["team-a/notebook"] == PodDevice(
        node="node-a", gpu=0, profile="3g.40gb", gi=32, pod="team-a/notebook", container="main"
    )
    assert by_pod["team-c/big"].gpu == 1 and by_pod["team-c/big"].profile == "7g.80gb"
    assert by_pod["team-d/infer"].node == "node-c" and by_pod["team-d/infer"].gpu == 3
    assert by_pod["default/solo"].node == "node-b"
    gis = {(d.node, d.gpu, d.gi) for d in devices}
    assert len(gis) == len(devices)  # distinct instances


def test_series_that_vanish_in_a_reconfiguration_drop_out(cluster: Cluster) -> None:
    """mig-manager pauses dcgm-exporter on the node: its instances leave the report once they are stale."""
    node = cluster.c.node("node-d")
    label = "nvidia.com/gpu.deploy.dcgm-exporter"
    port = PrometheusUsage(cluster.prom.url, UsageSettings(window="10m", fresh="2s"))
    assert any(u.node == "node-d" for u in port.usage().instances)
    node.labels[label] = PAUSED
    try:
        cluster.prom.wait_for('last_over_time(DCGM_FI_PROF_GR_ENGINE_ACTIVE{Hostname="node-d"}[2s])', lambda r: not r)
        report = port.usage()
        assert report.available
        assert not any(u.node == "node-d" for u in report.instances)
        assert any(u.node == "node-a" for u in report.instances)
        assert not any(d.node == "node-d" for d in port.pod_devices())
    finally:
        node.labels[label] = "true"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_prometheus_down_is_unavailable_logged_once_and_exported(caplog: pytest.LogCaptureFixture) -> None:
    observer = MetricsObserver()
    port = PrometheusUsage(f"http://127.0.0.1:{_closed_port()}", on_status=observer.usage_status)
    with caplog.at_level(logging.INFO, logger="optimizer.usage.prometheus"):
        reports = [port.usage() for _ in range(3)]
        devices = port.pod_devices()
    assert all(not r.available and r.instances == [] and "unreachable" in (r.reason or "") for r in reports)
    assert devices == []
    assert len([r for r in caplog.records if "usage=unavailable" in r.getMessage()]) == 1
    assert observer.registry.get_sample_value("migopt_usage_available") == 0
    assert observer.registry.get_sample_value("migopt_usage_query_failures_total") == 4
    assert port.failures == 4 and port.down


def test_prometheus_that_does_not_answer_times_out() -> None:
    with socket.socket() as listener:  # accepts connections into its backlog and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        report = PrometheusUsage(url, UsageSettings(timeout_s=0.3)).usage()
    assert not report.available and "did not answer" in (report.reason or "")


def test_recovery_is_logged_once_and_sets_the_metric(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    observer = MetricsObserver()
    port = PrometheusUsage(f"http://127.0.0.1:{_closed_port()}", on_status=observer.usage_status)
    with caplog.at_level(logging.INFO, logger="optimizer.usage.prometheus"):
        assert not port.usage().available
        port._client.url = cluster.prom.url  # the same port object, Prometheus back
        assert port.usage().available and port.usage().available
    assert len([r for r in caplog.records if "usage=available" in r.getMessage()]) == 1
    assert observer.registry.get_sample_value("migopt_usage_available") == 1


def test_bad_windows_are_one_line_errors() -> None:
    assert parse_duration("90s") == 90 and parse_duration("1h") == 3600
    for bad in ("1 hour", "0m", "", "5"):
        with pytest.raises(MigoptError, match="bad window"):
            PrometheusUsage("http://127.0.0.1:9", UsageSettings(window=bad))


def test_twin_usage_model_is_deterministic_and_has_light_pods() -> None:
    names = [f"ns/pod-{i}" for i in range(300)]
    first, second = UsageModel(), UsageModel()
    assert [first.of(n) for n in names] == [second.of(n) for n in names]
    light = sum(1 for n in names if first.of(n).engine_active <= 0.2)
    assert 60 < light < 140  # about a third
    assert first.of("ns/pod-r1", origin="ns/pod-1") == first.of("ns/pod-1")
    assert UsageModel(USAGE).of("solo") == USAGE["solo"]


def test_exporter_answers_in_dcgm_shape(tmp_path: Path) -> None:
    text = DcgmExporter(twin_b(), MODEL, hostname_label="hostname", framebuffer=False).render()
    line = next(x for x in text.splitlines() if x.startswith("DCGM_FI_PROF_GR_ENGINE_ACTIVE{"))
    for label in ('gpu="3"', 'UUID="GPU-', 'device="nvidia3"', 'modelName="NVIDIA A100-SXM4-40GB"',
                  'GPU_I_PROFILE="2g.10gb"', 'GPU_I_ID="', 'hostname="node-c"', 'pod="infer"',
                  'namespace="team-d"', 'container="main"'):  # fmt: skip
        assert label in line
    assert "DCGM_FI_DEV_FB_USED" not in text
