"""A small twin to serve over the API facade, a `kubernetes` client for a URL, and the real kubectl."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from simulations.twin import Twin
from solver.snapshot import parse_snapshot
from tests.twin_fixtures import CONFIG, T

ONE_G = "nvidia.com/mig-1g.5gb"
THREE_G = "nvidia.com/mig-3g.20gb"


def three_g_gpu(index: int, pods: dict[int, str] | None = None) -> dict[str, Any]:
    """An A100-40GB GPU split 2 x 3g.20gb (starts 0 and 4); `pods` maps a start to its holder."""
    held = pods or {}
    instances = [{"profile": "3g.20gb", "start": s, "pod": held.get(s)} for s in (0, 4)]
    return {"index": index, "model": "A100-40GB", "instances": instances}


def small_twin() -> Twin:
    """node-a: two GPUs of 2 x 3g.20gb, one instance held by `team-a/train-0`; node-b: one idle such GPU."""
    nodes = [
        {"name": "node-a", "labels": {"nvidia.com/mig.config": "all-3g", "nvidia.com/mig.config.state": "success"},
         "gpus": [three_g_gpu(0, {0: "team-a/train-0"}), three_g_gpu(1)]},
        {"name": "node-b", "labels": {"nvidia.com/mig.config": "all-3g", "nvidia.com/mig.config.state": "success",
                                      "pool": "b"}, "gpus": [three_g_gpu(0)]},
    ]  # fmt: skip
    return Twin.from_snapshot(parse_snapshot({"nodes": nodes}), CONFIG, timings=T)


def kube_client(url: str) -> client.ApiClient:
    return client.ApiClient(client.Configuration(host=url))


def kubectl_run(config: Path, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """The real kubectl against a kubeconfig; its discovery cache stays beside the kubeconfig (a test's folder)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed (the README's test setup needs it)")
    env = os.environ | {"HOME": str(config.parent)}
    command = [kubectl, "--kubeconfig", str(config), "--request-timeout=20s", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)


@contextmanager
def twin_serve(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`migopt twin serve` in a subprocess, once its kubeconfig exists: the process (its stdout past the first line)
    and the kubeconfig. It must exit 0 when terminated."""
    config = tmp_path / "kubeconfig"
    migopt = Path(sys.executable).parent / "migopt"
    process = subprocess.Popen(
        [str(migopt), "twin", "serve", "--kubeconfig", str(config), "--speed", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line, process.stderr.read() if process.stderr else line
        deadline = time.monotonic() + 30
        while not config.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield process, config
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
