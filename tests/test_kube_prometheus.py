"""`migopt run`'s Prometheus side against a real Prometheus scraping the twin's dcgm-exporter-shaped series:
without the node agent, dcgm's pod labels tell which GPU each pod holds; right-sizing is published as metrics."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import generate_latest

from migopt.run import Runner
from migopt.settings import load_settings
from simulations.twin.api import TwinApiServer, write_kubeconfig
from simulations.twin.dcgm_exporter import serve_dcgm_exporter
from tests.kube_fixtures import cluster
from tests.prometheus_server import prometheus


def lead(runner: Runner) -> None:
    deadline = time.monotonic() + 10
    while not runner.elector.is_leader():
        assert time.monotonic() < deadline, "never became leader"
        time.sleep(0.05)


HELD = {"node-0": {0: {0: "team-a/train-0"}, 1: {4: "team-a/train-1"}}, "node-1": {1: {0: "team-b/infer-0"}}}


def test_dcgm_pod_labels_locate_pods_and_rightsizing_is_published(tmp_path: Path) -> None:
    twin = cluster(2, held=HELD)
    with TwinApiServer(twin, speed=0, agent_annotations=False) as server:
        exporter = serve_dcgm_exporter(twin, 0, lock=server.lock)
        try:
            with prometheus({"dcgm": f"127.0.0.1:{exporter.port}"}, tmp_path / "prom") as prom:
                prom.wait_for('DCGM_FI_PROF_GR_ENGINE_ACTIVE{pod!=""}', lambda r: len(r) >= 3)
                time.sleep(2)  # a few samples for the percentiles
                settings = load_settings(
                    kubeconfig=str(write_kubeconfig(tmp_path / "kubeconfig", server.url)),
                    prometheus_url=prom.url,
                    metrics_port=0,
                    rightsizing={"min_samples": 1},
                )
                runner = Runner(settings)
                runner.start()
                try:
                    lead(runner)
                    runner.run_pass()
                    snapshot = runner.port.snapshot()
                    assert runner.port.sources == {"node-0": "prometheus", "node-1": "prometheus"}
                    holders = {(n.name, g.index): sorted(g.holders) for n in snapshot.nodes for g in n.gpus}
                    assert holders == {
                        ("node-0", 0): ["team-a/train-0"],
                        ("node-0", 1): ["team-a/train-1"],
                        ("node-1", 0): [],
                        ("node-1", 1): ["team-b/infer-0"],
                    }
                    exposition = generate_latest(runner.metrics.registry).decode()
                    assert "migopt_usage_available 1.0" in exposition
                    assert "migopt_rightsizing_recommendations" in exposition
                finally:
                    runner.stop()
        finally:
            exporter.stop()


def test_without_prometheus_usage_is_reported_unavailable(tmp_path: Path) -> None:
    with TwinApiServer(cluster(1), speed=0) as server:
        settings = load_settings(
            kubeconfig=str(write_kubeconfig(tmp_path / "kubeconfig", server.url)),
            prometheus_url="http://127.0.0.1:9",  # nothing listens there
            metrics_port=0,
        )
        runner = Runner(settings)
        runner.start()
        try:
            lead(runner)
            runner.run_pass()  # planning goes on without usage
            assert runner.failed_passes == 0
            exposition = generate_latest(runner.metrics.registry).decode()
            assert "migopt_usage_available 0.0" in exposition
            assert runner.port.sources == {"node-0": "agent"}
        finally:
            runner.stop()
