"""Hostile values never crash anything: a request for more devices than exist, priorities beyond int32, YAML
nested thousands deep or not UTF-8, an owned ConfigMap nobody can parse, and a loop whose passes keep failing.

Each either becomes what Kubernetes itself would make of it (a pod that stays pending, with a reason) or one
line naming the problem (exit code 2 for the CLI); never a traceback, never a stopped controller.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client
from prometheus_client import generate_latest

from migopt.run import Runner
from migopt.settings import load_settings
from nvidia_protocol.migparted import parse_config
from nvidia_protocol.safe_yaml import MAX_DEPTH, load_yaml
from optimizer.controller.reconcile import ControllerSettings
from optimizer.kube.adapter import KubeClusterPort
from optimizer.kube.objects import pending_pod, pod_requests, running_pod
from optimizer.metrics.exporter import serve_http
from simulations.twin.api import TwinApiServer, write_kubeconfig
from solver.catalog import load_catalog
from solver.errors import MigoptError
from solver.plan import PlanPolicy
from solver.planner import make_plan
from solver.snapshot import (
    MAX_DEVICES_PER_REQUEST,
    MAX_GPUS_PER_NODE,
    PRIORITY_MAX,
    PRIORITY_MIN,
    parse_snapshot,
)
from solver.validate import plan_problems
from tests.cli_runner import CliResult, run_cli, run_cli_process
from tests.controller_fixtures import mig_controller
from tests.kube_fixtures import ENFORCE, adapter, api_client, cluster, create_pod, drive, served, settle

HUGE = 100_000_000_000_000_000_000  # the measured request: CP-SAT refused it as a coefficient (TypeError)
ONE_G = "nvidia.com/mig-1g.5gb"


def snapshot_data(count: int = HUGE, priority: int = 0) -> dict[str, Any]:
    """One A100-40GB node with a free GPU; a pod asking for `count` 1g.5gb devices, and a small one."""
    return {
        "nodes": [{"name": "node-a", "gpus": [{"index": 0, "model": "A100-40GB", "instances": []}]}],
        "pods": [
            {"name": "big", "requests": {"nvidia.com/mig-1g.5gb": count}, "priority": priority},
            {"name": "small", "requests": {"nvidia.com/mig-1g.5gb": 1}},
        ],
    }


def one_line_error(result: CliResult) -> str:
    """The CLI's answer to a bad input: exit 2 and one `error: …` line, no traceback."""
    assert result.code == 2, result
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    return lines[0]


# ---- device counts and priorities -----------------------------------------------------------------------------


def test_no_node_could_ever_hold_the_clamped_bound() -> None:
    """Clamping a request to the bound keeps it unplaceable: more than any node can have of any profile."""
    most_per_gpu = max(p.max_count for m in load_catalog().models for p in m.profiles)
    assert MAX_GPUS_PER_NODE * most_per_gpu < MAX_DEVICES_PER_REQUEST


@pytest.mark.parametrize("policy", ["optimal", "greedy"])
def test_a_huge_request_in_a_snapshot_file_stays_pending_with_a_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, policy: str
) -> None:
    file = tmp_path / "snapshot.yaml"
    file.write_text(yaml.safe_dump(snapshot_data()))
    result = run_cli(capsys, "plan", "--snapshot", str(file), "--policy", policy, "-o", "json")
    assert result.code == 0, result.err
    plan = json.loads(result.out)
    assert [p["pod"] for p in plan["placements"]] == ["small"]
    [unplaced] = plan["unplaced"]
    assert unplaced["pod"] == "big"
    assert "more than any node in the cluster can hold (at most 7)" in unplaced["reason"]
    assert f"counts above {MAX_DEVICES_PER_REQUEST} are read as {MAX_DEVICES_PER_REQUEST}" in unplaced["reason"]


def test_a_request_no_node_holds_but_within_the_bound_says_so_and_the_plan_is_valid() -> None:
    snapshot = parse_snapshot(snapshot_data(count=8))  # one A100-40GB offers 7 x 1g.5gb at most
    assert snapshot.pods[0].requests == {"nvidia.com/mig-1g.5gb": 8}
    plan = make_plan(snapshot, PlanPolicy(time_limit_s=5))
    assert plan_problems(snapshot, plan, PlanPolicy()) == []
    assert {u.pod: u.reason for u in plan.unplaced} == {
        "big": "asks for 8x 1g.5gb on one node: more than any node in the cluster can hold (at most 7)"
    }


def test_priorities_beyond_int32_are_clamped_and_plan() -> None:
    data = snapshot_data(count=1, priority=2**63)
    data["nodes"][0]["gpus"][0]["instances"] = [{"profile": "7g.40gb", "start": 0, "pod": "old"}]
    data["running"] = [{"name": "old", "priority": -(2**70)}]
    snapshot = parse_snapshot(data)
    assert snapshot.pods[0].priority == PRIORITY_MAX and snapshot.running[0].priority == PRIORITY_MIN
    plan = make_plan(snapshot, PlanPolicy(time_limit_s=5))
    assert plan_problems(snapshot, plan, PlanPolicy()) == []
    assert plan.evictions == ["old"]  # order is kept: the clamped high priority still outranks the low one


def test_negative_counts_and_too_many_gpus_are_one_line() -> None:
    with pytest.raises(MigoptError, match=r"pods\[big\]\.requests: negative count -1"):
        parse_snapshot(snapshot_data(count=-1))
    data = snapshot_data(count=1)
    data["nodes"][0]["gpus"] = [{"index": i, "model": "A100-40GB"} for i in range(MAX_GPUS_PER_NODE + 1)]
    with pytest.raises(MigoptError, match=rf"nodes\[node-a\]\.gpus: .*{MAX_GPUS_PER_NODE}") as caught:
        parse_snapshot(data)
    assert "\n" not in str(caught.value)


@settings(max_examples=60, deadline=None)
@given(count=st.integers(), priority=st.integers())
def test_any_integer_count_or_priority_loads_clamped_or_is_one_line(count: int, priority: int) -> None:
    try:
        snapshot = parse_snapshot(snapshot_data(count=count, priority=priority))
    except MigoptError as err:  # a negative count, or none (zero counts are dropped, leaving no MIG request)
        assert count <= 0 and "\n" not in str(err)
        return
    big = snapshot.pods[0]
    assert big.requests == {"nvidia.com/mig-1g.5gb": min(count, MAX_DEVICES_PER_REQUEST)}
    assert PRIORITY_MIN <= big.priority <= PRIORITY_MAX


def api_pod(limits: dict[str, Any], priority: Any = 0, node: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"priority": priority, "containers": [{"name": "c", "resources": {"limits": limits}}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": "p", "namespace": "ns"}, "spec": spec, "status": {"phase": "Pending"}}


@pytest.mark.parametrize(
    ("value", "count"),
    [
        *[("1", 1), ("1k", 1000), ("2e2", 200), ("500m", 0), ("-3", 0), ("1.5", 0), ("x", 0), ("9" * 10**6 + "x", 0)],
        *[(value, MAX_DEVICES_PER_REQUEST) for value in ("2Ki", "100E", str(HUGE), "1e99999999999", "9" * 5000)],
    ],
    ids=lambda v: f"{v[:12]}...{len(v)}" if isinstance(v, str) and len(v) > 24 else None,
)
def test_api_quantities_are_read_whole_and_bounded(value: str, count: int) -> None:
    assert pod_requests(api_pod({ONE_G: value})).get(ONE_G, 0) == count


def test_api_priorities_are_clamped_and_a_malformed_one_does_not_fail_the_snapshot() -> None:
    assert pending_pod(api_pod({ONE_G: "1"}, priority=2**40)).priority == PRIORITY_MAX
    assert running_pod(api_pod({ONE_G: "1"}, priority=-(2**40), node="n")).priority == PRIORITY_MIN
    assert running_pod(api_pod({ONE_G: "1"}, priority="high", node="n")).priority == 0


QUANTITY_LIKE = r"[+-]?[0-9]{0,30}(\.[0-9]*)?([eE][+-]?[0-9]{1,12}|[kMGTPEmun]i?)?"


@settings(max_examples=100, deadline=None)
@given(value=st.one_of(st.text(max_size=40), st.from_regex(QUANTITY_LIKE, fullmatch=True)))
def test_any_quantity_text_is_a_bounded_count(value: str) -> None:
    count = pod_requests(api_pod({ONE_G: value})).get(ONE_G, 0)
    assert 0 <= count <= MAX_DEVICES_PER_REQUEST


@pytest.fixture
def facade() -> Iterator[TwinApiServer]:
    with TwinApiServer(cluster(1), speed=0) as running:
        yield running


@pytest.fixture
def port(facade: TwinApiServer) -> Iterator[KubeClusterPort]:
    started = adapter(facade)
    yield started
    started.stop()


def test_a_huge_api_request_stays_pending_with_a_reason_and_planning_goes_on(
    facade: TwinApiServer, port: KubeClusterPort
) -> None:
    api = api_client(facade)
    create_pod(api, "small", ONE_G)
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "big", "namespace": "team-b"},
        "spec": {
            "priority": 2**40,
            "containers": [{"name": "main", "image": "x", "resources": {"limits": {ONE_G: str(HUGE)}}}],
        },
    }
    client.CoreV1Api(api).create_namespaced_pod("team-b", body)
    settle(port, facade)
    snapshot = port.snapshot()
    big = next(p for p in snapshot.pods if p.name == "team-b/big")
    assert big.requests == {ONE_G: MAX_DEVICES_PER_REQUEST} and big.priority == PRIORITY_MAX
    controller = mig_controller(port, ControllerSettings(batch_idle_s=0, batch_timeout_s=0))
    controller.tick()
    plan = controller.last_plan
    assert plan is not None
    reasons = {u.pod: u.reason for u in plan.unplaced}
    assert "more than any node in the cluster can hold" in reasons["team-b/big"]
    assert "team-b/small" in {p.pod for p in plan.placements}


# ---- YAML nested thousands deep, or not UTF-8 -----------------------------------------------------------------

DEEP = "[" * 3000 + "]" * 3000
DEEP_MAP = "".join(" " * i + "a:\n" for i in range(3000)) + " " * 3000 + "b: 1\n"
NOT_UTF8 = b"nodes: []\n# caf\xe9 \xff\xfe\n"


@pytest.fixture(params=["deep", "deep-map", "not-utf8"])
def hostile_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    file = tmp_path / "hostile.yaml"
    if request.param == "deep":
        file.write_text(DEEP)
    elif request.param == "deep-map":
        file.write_text(DEEP_MAP)
    else:
        file.write_bytes(NOT_UTF8)
    return file


@pytest.mark.parametrize(
    ("command", "what"),
    [(["plan", "--snapshot"], "snapshot"), (["simulate"], "scenario"), (["run", "--config"], "settings file")],
)
def test_hostile_yaml_files_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], hostile_file: Path, command: list[str], what: str
) -> None:
    extra = ["--kubeconfig", str(hostile_file.parent / "no-kubeconfig")] if command[0] == "run" else []
    line = one_line_error(run_cli(capsys, *command, str(hostile_file), *extra))
    assert line.startswith(f"error: {what} ") and str(hostile_file) in line


def test_a_deep_snapshot_is_one_line_in_a_real_process(tmp_path: Path) -> None:
    file = tmp_path / "deep.json"
    file.write_text(DEEP)
    line = one_line_error(run_cli_process("plan", "--snapshot", str(file)))
    assert f"nested deeper than {MAX_DEPTH} levels" in line


def test_the_depth_bound_leaves_ordinary_nesting_alone() -> None:
    ok = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert load_yaml(ok, "x") is not None
    with pytest.raises(MigoptError, match=f"x is not valid YAML at line 1: nested deeper than {MAX_DEPTH}"):
        load_yaml("[" + ok + "]", "x")


# ---- the owned mig-parted ConfigMap -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        DEEP,
        "version: v1\nmig-configs:\n" + DEEP_MAP,
        "version: v1\nmig-configs: {a: [{devices: [{2001-12-14: 1}], mig-enabled: true}]}\n",
        "version: v1\nmig-configs: {a: [{devices: all, mig-enabled: true, mig-devices: {1g.5gb: {2001-12-14: 1}}}]}",
        "version: v1\nmig-configs: {}\n\ud800",  # a lone surrogate: JSON from the API can carry one
        "version: v1\x00",
        "a0: &a0 {k: 1}\n" + "".join(f"a{i}: &a{i}\n  <<: *a{i - 1}\n" for i in range(1, 3000)),
    ],
    ids=["deep", "deep-map", "date-key-device", "date-key-count", "surrogate", "nul", "merge-chain"],
)
def test_any_unreadable_owned_config_is_a_migopt_error(text: str) -> None:
    with pytest.raises(MigoptError, match=r"^invalid mig-parted config: ") as caught:
        parse_config(text)
    assert "\n" not in str(caught.value)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(alphabet=st.sampled_from("[]{}:,-&*<!? \n\tab1\x00\ud800"), max_size=200))
def test_parse_config_answers_a_config_or_a_migopt_error(text: str) -> None:
    with contextlib.suppress(MigoptError):
        parse_config(text)


def test_a_deep_owned_configmap_is_reported_and_rewritten(
    facade: TwinApiServer, port: KubeClusterPort, caplog: pytest.LogCaptureFixture
) -> None:
    core = client.CoreV1Api(api_client(facade))
    core.patch_namespaced_config_map("migopt-mig-config", "gpu-operator", {"data": {"config.yaml": DEEP}})
    deadline = time.monotonic() + 10
    while port.read_mig_config() != DEEP:  # the adapter's ConfigMap cache follows a watch
        assert time.monotonic() < deadline, "the adapter never saw the patched ConfigMap"
        time.sleep(0.01)
    caplog.set_level(logging.WARNING)
    port.snapshot()  # read, reported, not raised
    assert any("owned mig-parted config is invalid" in r.getMessage() for r in caplog.records)
    names = [f"infer-{n}" for n in range(3)]
    for name in names:
        create_pod(api_client(facade), name, ONE_G)
    controller = mig_controller(port, ENFORCE)
    drive(controller, port, facade, until=lambda: served(facade, [f"team-b/{n}" for n in names]))
    text = core.read_namespaced_config_map("migopt-mig-config", "gpu-operator").data["config.yaml"]
    assert "migopt-" in parse_config(text).model_dump_json()  # rewritten, readable, with migopt's entries


# ---- a loop whose passes keep failing ---------------------------------------------------------------------------


def probe(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_healthz_fails_after_n_failed_passes_and_recovers_after_a_good_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")  # never contacted
    runner = Runner(load_settings(kubeconfig=str(kubeconfig), metrics_port=0, unhealthy_after_failed_passes=3))
    server = serve_http(0, runner.metrics.registry, healthy=runner.healthy, ready=runner.ready, host="127.0.0.1")
    failing = True

    def tick() -> None:
        if failing:
            raise RuntimeError("an object shape nobody foresaw")

    monkeypatch.setattr(runner.controller, "tick", tick)
    healthz = f"http://127.0.0.1:{server.port}/healthz"
    try:
        assert probe(healthz) == 200
        for _ in range(2):
            runner.run_pass()
        assert probe(healthz) == 200  # two failures in a row: still within the bound
        runner.run_pass()
        assert probe(healthz) == 503 and runner.failed_in_a_row == 3
        failing = False
        runner.run_pass()
        assert probe(healthz) == 200 and runner.failed_in_a_row == 0
        exposition = generate_latest(runner.metrics.registry).decode()
        assert 'migopt_reconcile_passes_total{result="failed"} 3.0' in exposition
        assert 'migopt_reconcile_passes_total{result="ok"} 1.0' in exposition
    finally:
        server.stop()


def test_the_failed_pass_bound_is_a_setting(tmp_path: Path) -> None:
    file = tmp_path / "settings.yaml"
    file.write_text("unhealthy_after_failed_passes: 7\n")
    assert load_settings(file).unhealthy_after_failed_passes == 7
    file.write_text("unhealthy_after_failed_passes: 0\n")
    with pytest.raises(MigoptError, match="unhealthy_after_failed_passes"):
        load_settings(file)


def test_a_hostile_gpu_count_label_is_a_reason_not_a_loop() -> None:
    from nvidia_protocol.labels import COUNT_LABEL, MIG_CONFIG_LABEL, MIG_STATE_LABEL
    from nvidia_protocol.standard_configs import standard_config
    from optimizer.kube.layouts import configured_maps
    from solver.catalog import load_catalog

    model = load_catalog().model("A100-40GB")
    labels = {MIG_CONFIG_LABEL: "all-balanced", MIG_STATE_LABEL: "success", COUNT_LABEL: str(10**12)}
    with pytest.raises(MigoptError, match="is not a GPU count"):
        configured_maps(labels, standard_config([model]), model)
