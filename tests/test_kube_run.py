"""`migopt run` as separate processes against `TwinApiServer` (the twin's API facade; there is no kube-apiserver
here): pending pods get served, drains respect PodDisruptionBudgets, two replicas never act at once, a stopped
leader hands over, and `migopt snapshot` writes what `migopt plan` reads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from simulations.twin.api import TwinApiServer, write_kubeconfig
from tests.cli_runner import run_cli_process
from tests.kube_fixtures import api_client, cluster, create_pod

ONE_G = "nvidia.com/mig-1g.5gb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def server() -> Iterator[TwinApiServer]:
    twin = cluster(2, held={"node-0": {0: {0: "team-a/train-0"}}})
    with TwinApiServer(twin, speed=20) as running:
        yield running


def start_controller(kubeconfig: Path, identity: str, log: Path, metrics_port: int = 0) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MIGOPT_LOG_LEVEL": "INFO",
        "MIGOPT_IDENTITY": identity,
        "MIGOPT_CONTROLLER__BATCH_IDLE_S": "0",
        "MIGOPT_CONTROLLER__BATCH_TIMEOUT_S": "0",
        "MIGOPT_LEADER__LEASE_DURATION_S": "3",
        "MIGOPT_LEADER__RENEW_DEADLINE_S": "2",
        "MIGOPT_LEADER__RETRY_PERIOD_S": "0.5",
    }
    command = [sys.executable, "-m", "optimizer", "run", "--mode", "enforce", "--kubeconfig", str(kubeconfig)]
    command += ["--interval", "0.2", "--metrics-port", str(metrics_port)]
    return subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def twin_state(server: TwinApiServer) -> dict[str, object]:
    with server.lock:
        twin = server.twin
        return {
            "running": {n for n, p in twin.pods.items() if p.phase == "Running"},
            "cordoned": {n.name for n in twin.nodes.values() if n.unschedulable},
            "evictions": [(e.pod, str(e.outcome)) for e in twin.evictions],
        }


def test_two_enforcing_replicas_serve_pods_respect_budgets_and_hand_over(server: TwinApiServer, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
    api = api_client(server)
    policy = client.PolicyV1Api(api)
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "train", "namespace": "team-a"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"migopt.io/twin-app": "train"}}},
    }
    policy.create_namespaced_pod_disruption_budget("team-a", pdb)
    port = free_port()
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [
        start_controller(kubeconfig, "replica-a", logs[0], port),
        start_controller(kubeconfig, "replica-b", logs[1]),
    ]
    try:
        wait_for(lambda: b"200" in _get(f"http://127.0.0.1:{port}/readyz"), 30, "replica-a ready")
        assert _get(f"http://127.0.0.1:{port}/healthz").startswith(b"200")
        names = [f"infer-{n}" for n in range(20)]
        for name in names:
            create_pod(api, name, ONE_G)
        wait_for(
            lambda: {f"team-b/{n}" for n in names} <= twin_state(server)["running"],  # type: ignore[operator]
            90,
            "the pending pods to run",
        )
        metrics = _get(f"http://127.0.0.1:{port}/metrics").decode()
        assert "migopt_leader" in metrics
        acting = [log for log in logs if "phase=" in log.read_text()]
        assert len(acting) == 1, "exactly one replica acted"
        assert "layout_sources agent=2" in acting[0].read_text()  # each plan says where GPU truth came from
        leader = 0 if acting[0] == logs[0] else 1
        state = twin_state(server)
        assert ("team-a/train-0", "evicted") not in state["evictions"]  # type: ignore[operator]
        wait_for(lambda: not twin_state(server)["cordoned"], 60, "every node uncordoned")
        # the leader stops; the standby takes over (the lease is released on the way out)
        procs[leader].terminate()
        procs[leader].wait(timeout=20)
        standby = logs[1 - leader]
        wait_for(lambda: "leader=True" in standby.read_text(), 20, "the standby to take the lease")
        more = [f"urgent-{n}" for n in range(3)]  # the cluster is full: they displace lower-priority 1g pods
        for name in more:
            create_pod(api, name, "nvidia.com/mig-2g.10gb", priority=1000)
        late = {f"team-b/{n}" for n in more}
        wait_for(lambda: late <= twin_state(server)["running"], 90, "the urgent pods to run")  # type: ignore[operator]
        assert "phase=" in standby.read_text()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
    assert all(p.returncode == 0 for p in procs), [log.read_text()[-2000:] for log in logs]
    for log in logs:
        assert "Traceback" not in log.read_text()


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return f"{response.status} ".encode() + response.read()
    except OSError as err:
        return str(err).encode()


def test_snapshot_writes_the_live_cluster_for_plan(server: TwinApiServer, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
    create_pod(api_client(server), "infer-0", ONE_G)
    out = tmp_path / "snap.yaml"
    result = run_cli_process("snapshot", "--kubeconfig", str(kubeconfig), "-o", str(out))
    assert result.code == 0, result.err
    assert "node-0: agent" in result.out
    planned = run_cli_process("plan", "--snapshot", str(out), "-o", "json")
    assert planned.code == 0, planned.err
    assert '"team-b/infer-0"' in planned.out


def test_run_without_a_cluster_is_one_line(tmp_path: Path) -> None:
    result = run_cli_process("run", "--kubeconfig", str(tmp_path / "missing"))
    assert result.code == 2
    assert result.err.strip().count("\n") == 0 and "kubeconfig" in result.err
    bad = run_cli_process("run", "--kubeconfig", str(tmp_path / "missing"), "--mode", "sometimes")
    assert bad.code == 2 and "mode" in bad.err
