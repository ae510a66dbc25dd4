"""`migopt run` as separate processes against `migopt twin serve` (the twin's facade of the Kubernetes API; no
kube-apiserver can be installed here), all through the real `kubernetes` client: pending pods get served, drains
respect PodDisruptionBudgets, two replicas never act at once, a stopped leader hands over, and
`migopt snapshot` writes what `migopt plan` reads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from optimizer.actuators.node_record import ChangeRecord
from optimizer.controller.actuator import Phase
from tests.cli_runner import run_cli_process
from tests.kube_fixtures import create_pod

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


SCENARIO = """name: two A100-40GB nodes
cluster: {nodes: 2, gpus_per_node: 2, models: [A100-40GB], initial_config: all-3g.20gb}
workload:  # not injected (no --workload): the test creates its pods through the API
  kind: synthetic
  spec: {arrival_rate_per_s: 0.01, duration_mean_s: 600, profile_mix: {1g.5gb: 1}, pods: 1}
"""


@pytest.fixture
def facade(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`migopt twin serve` as its own process (simulated time 30 x real time): its URL and a kubeconfig."""
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    kubeconfig = tmp_path / "kubeconfig"
    command = [sys.executable, "-m", "migopt", "twin", "serve", str(scenario), "--speed", "30"]
    process = subprocess.Popen([*command, "--kubeconfig", str(kubeconfig)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line[line.index("http://") :].split()[0]
        wait_for(kubeconfig.exists, 30, "the kubeconfig")
        yield url, kubeconfig
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0


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
    command = [sys.executable, "-m", "migopt", "run", "--mode", "enforce", "--kubeconfig", str(kubeconfig)]
    command += ["--interval", "0.2", "--metrics-port", str(metrics_port)]
    # twin serve wrote the wait matching its ConfigMap refresh (60 simulated s, 2 s at speed 30) beside the kubeconfig
    command += ["--config", str(kubeconfig.with_name(kubeconfig.name + ".migopt.yaml"))]
    return subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def twin_state(url: str) -> dict[str, Any]:
    """What the facade's twin did, from its `/migopt-twin/state` endpoint."""
    with urllib.request.urlopen(f"{url}/migopt-twin/state", timeout=5) as response:
        state: dict[str, Any] = json.loads(response.read())
    return state


def running(url: str) -> set[str]:
    return {p["name"] for p in twin_state(url)["pods"] if p["phase"] == "Running" and not p["deleted"]}


def test_two_enforcing_replicas_serve_pods_respect_budgets_and_hand_over(
    facade: tuple[str, Path], tmp_path: Path
) -> None:
    url, kubeconfig = facade
    api = client.ApiClient(client.Configuration(host=url))
    # a training pod the scheduler binds at once (every GPU is 2 x 3g.20gb), guarded by a budget
    create_pod(api, "train-0", "nvidia.com/mig-3g.20gb", namespace="team-a", labels={"app": "train"})
    wait_for(lambda: "team-a/train-0" in running(url), 30, "the training pod to run")
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "train", "namespace": "team-a"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "train"}}},
    }
    client.PolicyV1Api(api).create_namespaced_pod_disruption_budget("team-a", pdb)
    port = free_port()
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [
        start_controller(kubeconfig, "replica-a", logs[0], port),
        start_controller(kubeconfig, "replica-b", logs[1]),
    ]
    try:
        wait_for(lambda: b"200" in _get(f"http://127.0.0.1:{port}/readyz"), 30, "replica-a ready")
        assert _get(f"http://127.0.0.1:{port}/healthz").startswith(b"200")
        names = {f"team-b/infer-{n}" for n in range(20)}
        for name in names:
            create_pod(api, name.split("/")[1], ONE_G)
        wait_for(lambda: names <= running(url), 90, "the pending pods to run")
        assert "migopt_leader" in _get(f"http://127.0.0.1:{port}/metrics").decode()
        acting = [log for log in logs if "phase=" in log.read_text()]
        assert len(acting) == 1, "exactly one replica acted"
        assert "layout_sources agent=2" in acting[0].read_text()  # each plan says where GPU truth came from
        runs = twin_state(url)["mig_runs"]
        assert runs and all(r["outcome"] == "success" for r in runs)  # no label ran ahead of the ConfigMap volume
        evictions = twin_state(url)["evictions"]
        assert not any(e["pod"] == "team-a/train-0" and e["outcome"] == "evicted" for e in evictions)
        wait_for(lambda: not twin_state(url)["cordoned"], 60, "every node uncordoned")
        # the leader stops; the standby takes over (the lease is released on the way out)
        leader = logs.index(acting[0])
        procs[leader].terminate()
        procs[leader].wait(timeout=20)
        standby = logs[1 - leader]
        wait_for(lambda: "leader=True" in standby.read_text(), 20, "the standby to take the lease")
        urgent = {f"team-b/urgent-{n}" for n in range(3)}  # the cluster is full: they displace 1g pods
        for name in urgent:
            create_pod(api, name.split("/")[1], "nvidia.com/mig-2g.10gb", priority=1000)
        wait_for(lambda: urgent <= running(url), 90, "the urgent pods to run")
        assert "phase=" in standby.read_text()
        wait_for(lambda: not twin_state(url)["cordoned"], 60, "every node uncordoned")
        assert "team-a/train-0" in running(url)
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


def test_snapshot_writes_the_live_cluster_for_plan(facade: tuple[str, Path], tmp_path: Path) -> None:
    url, kubeconfig = facade
    create_pod(client.ApiClient(client.Configuration(host=url)), "infer-0", "nvidia.com/mig-1g.5gb")
    out = tmp_path / "snap.yaml"
    result = run_cli_process("snapshot", "--kubeconfig", str(kubeconfig), "--output-file", str(out))
    assert result.code == 0, result.err
    assert "node-0: agent" in result.err and not result.out  # the summary on stderr, the data in the file
    planned = run_cli_process("plan", "--snapshot", str(out), "-o", "json")
    assert planned.code == 0, planned.err
    assert '"team-b/infer-0"' in planned.out
    as_json = run_cli_process("snapshot", "--kubeconfig", str(kubeconfig), "-o", "json")  # -o is a format
    assert as_json.code == 0 and "node-0" in {n["name"] for n in json.loads(as_json.out)["nodes"]}


def test_run_without_a_cluster_is_one_line(tmp_path: Path) -> None:
    result = run_cli_process("run", "--kubeconfig", str(tmp_path / "missing"))
    assert result.code == 2
    assert result.err.strip().count("\n") == 0 and "kubeconfig" in result.err
    bad = run_cli_process("run", "--kubeconfig", str(tmp_path / "missing"), "--mode", "sometimes")
    assert bad.code == 2 and "mode" in bad.err


def test_snapshot_shows_a_quarantined_node(facade: tuple[str, Path], tmp_path: Path) -> None:
    url, kubeconfig = facade
    record = ChangeRecord(
        plan_id="plan-7", phase=Phase.FAILED, target="migopt-0123456789", evict={}, expected={}, deadline=0.0,
        finished_at=time.time(), failures=2,
    )  # fmt: skip
    body = {
        "metadata": {"name": "migopt-node-changes", "namespace": "migopt-system"},
        "data": {"node-0": record.model_dump_json()},
    }
    client.CoreV1Api(client.ApiClient(client.Configuration(host=url))).create_namespaced_config_map(
        "migopt-system", body
    )
    result = run_cli_process("snapshot", "--kubeconfig", str(kubeconfig), "--output-file", str(tmp_path / "snap.yaml"))
    assert result.code == 0, result.err
    assert "node node-0: last change plan-7 failed, quarantined for" in result.err


def test_snapshot_marks_the_nodes_outside_the_managed_ones(facade: tuple[str, Path], tmp_path: Path) -> None:
    url, kubeconfig = facade
    create_pod(client.ApiClient(client.Configuration(host=url)), "infer-0", "nvidia.com/mig-7g.40gb")
    config = tmp_path / "settings.yaml"
    selector = "matchLabels: {kubernetes.io/hostname: node-1}"
    config.write_text(f"controller:\n  policy:\n    scope:\n      managedNodes: {{{selector}}}\n")
    out = tmp_path / "snap.yaml"
    result = run_cli_process(
        "snapshot", "--kubeconfig", str(kubeconfig), "--config", str(config), "--output-file", str(out)
    )
    assert result.code == 0, result.err
    kept = "scope: 1 GPU nodes kept as they are, not managed by migopt (outside the managed-nodes selector): node-0"
    assert kept in result.err
    assert "unmanaged: outside the managed-nodes selector" in out.read_text()
    planned = run_cli_process("plan", "--snapshot", str(out), "-o", "json")
    assert planned.code == 0, planned.err
    assert "node-0" not in {g["node"] for g in json.loads(planned.out)["gpus"] if g["reconfigure"]}
