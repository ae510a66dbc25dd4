"""The real `kubectl` against the twin's API facade, and `migopt twin serve` as a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulations.twin.api import TwinApiServer, write_kubeconfig
from tests.twin_api_fixtures import small_twin, twin_serve

KUBECTL = shutil.which("kubectl")


@pytest.fixture(autouse=True)
def _kubectl_installed() -> None:
    """A real client nobody here wrote is the point of these tests: without it they fail rather than skip."""
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is not installed (the README's test setup needs it)")


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Iterator[tuple[TwinApiServer, Path]]:
    with TwinApiServer(small_twin(), speed=0) as server:
        yield server, write_kubeconfig(tmp_path / "kubeconfig", server.url)


def kubectl(config: Path, *args: str) -> str:
    env = os.environ | {"HOME": str(config.parent)}  # kubectl's discovery cache stays in the test's folder
    done = subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(config), *args], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_kubectl_reads_nodes_and_pods(kubeconfig: tuple[TwinApiServer, Path]) -> None:
    _, config = kubeconfig
    nodes = kubectl(config, "get", "nodes").splitlines()
    assert nodes[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert [line.split()[:2] for line in nodes[1:]] == [["node-a", "Ready"], ["node-b", "Ready"]]
    pods = kubectl(config, "get", "pods", "-A", "-o", "wide").splitlines()
    assert pods[0].split()[:3] == ["NAMESPACE", "NAME", "READY"]
    assert pods[1].split()[:4] == ["team-a", "train-0", "1/1", "Running"] and "node-a" in pods[1]


def test_kubectl_label_drives_mig_manager_and_cordon(kubeconfig: tuple[TwinApiServer, Path]) -> None:
    server, config = kubeconfig
    out = kubectl(config, "label", "node", "node-b", "nvidia.com/mig.config=all-1g", "--overwrite")
    assert out.strip() == "node/node-b labeled"
    server.advance(200)
    state = kubectl(
        config, "get", "node", "node-b", "-o", r"jsonpath={.metadata.labels.nvidia\.com/mig\.config\.state}"
    )
    assert state == "success" and server.twin.state_history("node-b") == ["pending", "success"]
    count = kubectl(config, "get", "node", "node-b", "-o", r"jsonpath={.status.allocatable.nvidia\.com/mig-1g\.5gb}")
    assert count == "7"
    assert kubectl(config, "cordon", "node-b").strip() == "node/node-b cordoned"
    assert server.twin.node("node-b").unschedulable
    assert "SchedulingDisabled" in kubectl(config, "get", "node", "node-b")
    kubectl(config, "uncordon", "node-b")
    assert not server.twin.node("node-b").unschedulable


def test_migopt_twin_serve_answers_kubectl(tmp_path: Path) -> None:
    with twin_serve(tmp_path) as (process, config):
        assert process.stdout is not None
        nodes = kubectl(config, "get", "nodes", "-o", "name").split()
        assert nodes == [f"node/node-{i}" for i in range(8)]
        for _ in range(10):  # what it serves, a line each, the metrics last
            line = process.stdout.readline()
            if "dcgm-exporter-shaped" in line:
                break
        url = line.split(" at ")[1].strip()
        with urllib.request.urlopen(url, timeout=5) as response:
            assert b"DCGM_FI_PROF_GR_ENGINE_ACTIVE" in response.read()
