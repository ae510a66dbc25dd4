"""Node agent reports are verified before they are trusted: feasible for their GPUs, consistent with what the
device plugin advertises while the node is steady, and fresh; a rejected report is logged, counted and
recorded as an Event once, and its node falls back to the next source as if it had no report."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from nvidia_protocol.agent_report import (
    GPU_REPORT_ANNOTATION,
    NodeGpuReport,
    ReportedGpu,
    ReportedInstance,
    observed_time,
    parse_report,
)
from optimizer.agent.node_agent import DEFAULT_HEARTBEAT_S, NodeAgent
from optimizer.controller.reasons import WARNING_REASONS, EventReason
from optimizer.kube import layouts
from optimizer.kube.adapter import KubeClusterPort, KubeSettings
from optimizer.kube.api import ApiCaller
from optimizer.kube.layouts import (
    LayoutSource,
    RejectReason,
    ReportChecks,
    ReportRejected,
    resolve_layout,
    verify_report,
)
from optimizer.metrics.exporter import MetricsObserver
from simulations.twin import Twin
from simulations.twin.api import TwinApiServer
from solver.catalog import load_catalog
from solver.errors import MigoptError
from solver.plan import Plan
from solver.planner import make_plan
from solver.snapshot import ClusterSnapshot, parse_snapshot
from tests.cli_runner import run_cli
from tests.controller_fixtures import mig_controller
from tests.fake_nvml import FakeGpu, FakeInstance, FakeNvml
from tests.kube_fixtures import ENFORCE, adapter, api_client, cluster, create_pod, drive, served, settle
from tests.twin_fixtures import T

H100 = load_catalog().model("H100-80GB")
PCI = H100.pci_device_ids[0]
ONE_G = "nvidia.com/mig-1g.10gb"
SEVEN_G = "nvidia.com/mig-7g.80gb"
LABELS = {
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    "nvidia.com/gpu.count": "2",
    "nvidia.com/mig.strategy": "mixed",
    "nvidia.com/mig.config": "all-7g.80gb",
    "nvidia.com/mig.config.state": "success",
    "nvidia.com/gpu.deploy.device-plugin": "true",
}
STEADY = {"nvidia.com/gpu": 0, SEVEN_G: 2}  # what the plugin advertises for two GPUs at all-7g.80gb


def instance(profile: str, start: int, size: int | None = None) -> ReportedInstance:
    p = H100.profile(profile)
    return ReportedInstance(profile=p.name, profile_id=p.id, gi=start + 1, start=start,
                            size=p.memory_slices if size is None else size)  # fmt: skip


def gpu(index: int, instances: list[ReportedInstance], mig: bool = True) -> ReportedGpu:
    return ReportedGpu(index=index, uuid=f"GPU-{index}", name=H100.nvml_names[0], pci_device_id=PCI,
                       mig_current=mig, mig_pending=mig, instances=instances)  # fmt: skip


def report(gpus: list[ReportedGpu], observed_at: float | None) -> NodeGpuReport:
    stamp = observed_time(observed_at) if observed_at is not None else None
    return NodeGpuReport(driver="550.54.15", pod_resources=True, observed_at=stamp, gpus=gpus)


def honest(observed_at: float | None) -> NodeGpuReport:
    """Two GPUs at all-7g.80gb, as the node is."""
    return report([gpu(0, [instance("7g.80gb", 0)]), gpu(1, [instance("7g.80gb", 0)])], observed_at)


def phantom(observed_at: float | None, per_gpu: int = 7) -> NodeGpuReport:
    """The lie: `per_gpu` free 1g.10gb on each GPU (7 is a feasible layout; 50 is not)."""
    return report([gpu(g, [instance("1g.10gb", s % 7) for s in range(per_gpu)]) for g in (0, 1)], observed_at)


def checks(now: float = 1_000_000.0, **fields: Any) -> ReportChecks:
    values: dict[str, Any] = {"now": now, "allocatable": STEADY, "capacity": STEADY} | fields
    return ReportChecks(**values)


def resolve(text: str, labels: dict[str, str] = LABELS, **check_fields: Any) -> tuple[Any, list[ReportRejected]]:
    rejected: list[ReportRejected] = []
    layout = resolve_layout("n1", labels, {GPU_REPORT_ANNOTATION: text}, None, [], None,
                            checks=checks(**check_fields), on_reject=rejected.append)  # fmt: skip
    return layout, rejected


NOW = 1_000_000.0


# ---- each check on its own ---------------------------------------------------------------------------------


def test_an_honest_fresh_report_is_trusted() -> None:
    layout, rejected = resolve(honest(NOW - 30).to_annotation())
    assert rejected == [] and layout.source is LayoutSource.AGENT
    assert [g.mig_devices for g in layout.gpus] == [{"7g.80gb": 1}, {"7g.80gb": 1}]


@pytest.mark.parametrize(
    ("gpus", "problem"),
    [
        ([gpu(0, [instance("1g.10gb", s % 7) for s in range(50)])], "overlaps|exceeds"),
        ([gpu(0, [instance("3g.40gb", 2)])], "cannot start at memory slice 2"),
        ([gpu(0, [instance("3g.40gb", 0), instance("4g.40gb", 0)])], "overlaps"),
        ([gpu(0, [instance("1g.10gb", 0, size=4)])], "has size 4"),
        ([gpu(0, [instance("7g.80gb", 0).model_copy(update={"profile": "1g.5gb"})])], "unknown MIG profile"),
        ([gpu(0, [instance("7g.80gb", 0)], mig=False)], "MIG off but lists MIG instances"),
        ([gpu(0, []), gpu(0, [])], "GPU index 0 appears more than once"),
        ([gpu(i, []) for i in range(65)], "65 GPUs, more than 64"),
    ],
)
def test_an_infeasible_report_is_rejected(gpus: list[ReportedGpu], problem: str) -> None:
    with pytest.raises(ReportRejected, match=problem) as err:
        verify_report(report(gpus, NOW), LABELS, None)  # feasibility needs no clock and no node resources
    assert err.value.reason is RejectReason.INFEASIBLE
    layout, rejected = resolve(report(gpus, NOW).to_annotation(), allocatable={}, capacity={})
    assert [r.reason for r in rejected] == [RejectReason.INFEASIBLE]
    assert layout.source is LayoutSource.CONSERVATIVE  # the config label's layout, as without a report
    assert [g.mig_devices for g in layout.gpus] == [{"7g.80gb": 1}, {"7g.80gb": 1}]


def test_an_unknown_gpu_model_is_not_a_lie_but_not_planned_from_the_report_either() -> None:
    unknown = report([gpu(0, []).model_copy(update={"pci_device_id": "0xFFFF10DE"})], NOW)
    layout, rejected = resolve(unknown.to_annotation())
    assert rejected == [] and layout.source is LayoutSource.CONSERVATIVE


def test_a_report_that_disagrees_with_the_device_plugin_is_rejected_only_in_a_steady_state() -> None:
    lie = phantom(NOW).to_annotation()
    layout, rejected = resolve(lie)
    assert [r.reason for r in rejected] == [RejectReason.ALLOCATABLE_MISMATCH]
    assert "14x nvidia.com/mig-1g.10gb in the report, 0 allocatable" in str(rejected[0])
    assert layout.source is LayoutSource.CONSERVATIVE
    not_steady: list[tuple[dict[str, str], dict[str, Any]]] = [
        ({**LABELS, "nvidia.com/mig.config.state": "pending"}, {}),
        ({**LABELS, "nvidia.com/gpu.deploy.dcgm-exporter": "paused-for-mig-change"}, {}),
        ({**LABELS, "nvidia.com/gpu.deploy.device-plugin": "false"}, {}),
        (LABELS, {"allocatable": {"nvidia.com/gpu": 0, SEVEN_G: 0}}),  # the plugin restarting: capacity kept
        (LABELS, {"allocatable": {}, "capacity": {}}),  # no plugin has registered anything yet
    ]
    for labels, resources in not_steady:
        layout, rejected = resolve(lie, labels, **resources)
        assert rejected == [] and layout.source is LayoutSource.AGENT, (labels, resources)


def test_a_node_the_plugin_says_has_no_devices_cannot_be_given_some() -> None:
    empty = {"nvidia.com/gpu": 0}  # MIG on, no instances: registered, nothing advertised, nothing in capacity
    _, rejected = resolve(phantom(NOW).to_annotation(), allocatable=empty, capacity=empty)
    assert [r.reason for r in rejected] == [RejectReason.ALLOCATABLE_MISMATCH]
    _, rejected = resolve(report([gpu(0, []), gpu(1, [])], NOW).to_annotation(), allocatable=empty, capacity=empty)
    assert rejected == []


def test_whole_gpus_and_the_single_strategy_are_counted_as_the_plugin_counts_them() -> None:
    whole = report([gpu(0, [], mig=False), gpu(1, [instance("7g.80gb", 0)])], NOW).to_annotation()
    _, rejected = resolve(whole, allocatable={"nvidia.com/gpu": 1, SEVEN_G: 1})
    assert rejected == []
    single = {
        **LABELS,
        "nvidia.com/mig.strategy": "single",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb",
    }
    layout, rejected = resolve(phantom(NOW).to_annotation(), single, allocatable={"nvidia.com/gpu": 14})
    assert rejected == [] and layout.source is LayoutSource.AGENT
    with pytest.raises(MigoptError, match=r"allocatable-mismatch.*without the agent: under the single strategy"):
        resolve(phantom(NOW).to_annotation(), single, allocatable={"nvidia.com/gpu": 2})
    mixed_types = report([gpu(0, [instance("7g.80gb", 0)]), gpu(1, [instance("1g.10gb", 0)])], NOW)
    none = {"nvidia.com/gpu": 0}
    layout, rejected = resolve(mixed_types.to_annotation(), single, allocatable=none, capacity=none)
    assert rejected == [] and layout.source is LayoutSource.AGENT  # an invalid mix: the plugin advertises none


def test_a_report_read_before_the_devices_changed_is_not_trusted_nor_called_a_lie() -> None:
    """The agent reads every interval: right after a change the plugin can advertise the new devices while the
    last report still shows the old ones. Not trusted (the config label describes the node), not rejected."""
    layout, rejected = resolve(phantom(NOW - 20).to_annotation(), advertised_since=NOW - 10)
    assert rejected == [] and layout.source is LayoutSource.CONSERVATIVE
    _, rejected = resolve(phantom(NOW - 5).to_annotation(), advertised_since=NOW - 10)
    assert [r.reason for r in rejected] == [RejectReason.ALLOCATABLE_MISMATCH]


@pytest.mark.parametrize(
    ("observed", "reason"),
    [
        (NOW - 30, None),
        (NOW - 599, None),
        (NOW - 601, RejectReason.STALE),
        (NOW + 30, None),  # a node clock slightly ahead
        (NOW + 3600, RejectReason.FUTURE),
        (None, RejectReason.UNDATED),
    ],
)
def test_freshness(observed: float | None, reason: RejectReason | None) -> None:
    layout, rejected = resolve(honest(observed).to_annotation())
    assert [r.reason for r in rejected] == ([reason] if reason else [])
    assert layout.source is (LayoutSource.CONSERVATIVE if reason else LayoutSource.AGENT)


def test_an_undated_report_is_still_readable_and_trusted_where_nothing_has_a_clock() -> None:
    """An older agent's report parses, and `resolve_layout` without checks (tools, tests) still uses it; the
    adapter, which has a clock, does not (see `test_freshness`)."""
    text = honest(None).to_annotation()
    assert "observed_at" not in text and parse_report(text, "n1").observed_at is None
    assert resolve_layout("n1", LABELS, {GPU_REPORT_ANNOTATION: text}, None, [], None).source is LayoutSource.AGENT


def test_the_time_is_rfc3339_and_a_unix_number_is_read_too() -> None:
    text = honest(1_700_000_000.7).to_annotation()
    assert json.loads(text)["observed_at"] == "2023-11-14T22:13:20Z"
    numeric = json.dumps({**json.loads(text), "observed_at": 1_700_000_000})
    assert parse_report(numeric, "n1").observed_at == parse_report(text, "n1").observed_at
    _, rejected = resolve(json.dumps({**json.loads(text), "observed_at": "2023-11-14T22:13:20"}))  # no zone
    assert [r.reason for r in rejected] == [RejectReason.MALFORMED]


def test_a_malformed_report_is_rejected_and_the_node_falls_back() -> None:
    layout, rejected = resolve("{not json")
    assert [r.reason for r in rejected] == [RejectReason.MALFORMED]
    assert layout.source is LayoutSource.CONSERVATIVE
    with pytest.raises(MigoptError, match=r"rejected \(malformed\).*; and without the agent: .*not applied"):
        resolve("{not json", {**LABELS, "nvidia.com/mig.config.state": "pending"})


def test_settings_defaults_and_the_new_event_reason() -> None:
    settings = KubeSettings()
    assert (settings.report_max_age_s, settings.report_max_skew_s) == (600.0, 60.0)
    assert settings.report_max_age_s / 2 >= DEFAULT_HEARTBEAT_S
    assert EventReason.REPORT_REJECTED.value == "MigReportRejected" and EventReason.REPORT_REJECTED in WARNING_REASONS


def test_the_rejection_counter_has_every_reason_from_the_first_scrape() -> None:
    metrics = MetricsObserver()
    metrics.report_rejected("n1", "stale")
    text = metrics.exposition().decode()
    for reason in RejectReason:
        expected = 1.0 if reason is RejectReason.STALE else 0.0
        assert f'migopt_layout_source_rejected_total{{reason="{reason}"}} {expected}' in text


# ---- the node agent's heartbeat ----------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_agent_republishes_an_unchanged_report_every_heartbeat() -> None:
    nvml = FakeNvml([FakeGpu("A100-40GB", "GPU-a", instances=[FakeInstance("3g.20gb", start=0, gi=1)])])
    written: list[str] = []
    clock = Clock()
    agent = NodeAgent(nvml, written.append, heartbeat_s=300, clock=clock)
    steps = []
    for _ in range(12):
        steps.append(agent.step().written)
        clock.now += 30
    assert steps == [True] + [False] * 9 + [True, False]  # at 0 s and at 300 s
    stamps = [parse_report(w, "n1").observed_at for w in written]
    assert [s.timestamp() if s else None for s in stamps] == [NOW, NOW + 300]
    unstamped = [parse_report(w, "n1").model_copy(update={"observed_at": None}) for w in written]
    assert unstamped[0] == unstamped[1]  # the same report, a new time
    nvml.gpus[0].instances[0].processes = 1  # a change is published at once, heartbeat or not
    assert agent.step().written and parse_report(written[-1], "n1").gpus[0].instances[0].busy


def test_a_failed_heartbeat_is_retried_next_interval() -> None:
    nvml = FakeNvml([FakeGpu("A100-40GB", "GPU-a")])
    written: list[str] = []
    down = False

    def write(text: str) -> None:
        if down:
            raise MigoptError("patch node n1: HTTP 503 Service Unavailable")
        written.append(text)

    clock = Clock()
    agent = NodeAgent(nvml, write, heartbeat_s=60, clock=clock)
    assert agent.step().written
    down, clock.now = True, NOW + 60
    assert agent.step().failed
    down, clock.now = False, NOW + 90
    assert agent.step().written and len(written) == 2


def test_the_agent_cli_takes_a_heartbeat_and_stamps_its_report(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("optimizer.agent.node_agent.load_nvml", lambda: FakeNvml([FakeGpu("A100-40GB", "GPU-a")]))
    result = run_cli(capsys, "agent", "--once", "--dry-run", "--heartbeat", "120",
                     "--pod-resources-socket", "/nonexistent.sock")  # fmt: skip
    assert result.code == 0
    observed = parse_report(result.out, "n1").observed_at
    assert observed is not None and abs(observed.timestamp() - time.time()) < 60


# ---- against the twin's API facade with the real adapter -----------------------------------------------------


def h100_twin(nodes: int = 2) -> Twin:
    """`nodes` H100 nodes of two GPUs at all-7g.80gb, nothing running."""
    spec = [
        {
            "name": f"node-{n}",
            "labels": {"nvidia.com/mig.config": "all-7g.80gb", "nvidia.com/mig.config.state": "success"},
            "gpus": [{"index": g, "model": "H100-80GB", "instances": [{"profile": "7g.80gb", "start": 0}]}
                     for g in (0, 1)],
        }
        for n in range(nodes)
    ]  # fmt: skip
    return Twin.from_snapshot(parse_snapshot({"nodes": spec}), None, timings=T)


@pytest.fixture
def no_agent() -> Iterator[TwinApiServer]:
    """`migopt twin serve --no-agent`: reports are whatever someone writes."""
    with TwinApiServer(h100_twin(), speed=0, agent_annotations=False) as running:
        yield running


def counted_adapter(server: TwinApiServer, metrics: MetricsObserver) -> KubeClusterPort:
    port = KubeClusterPort(
        api_client(server),
        KubeSettings(watch_timeout_s=30, sync_timeout_s=10, event_qps=0),
        caller=ApiCaller(backoff_s=0.01, max_backoff_s=0.05),
        on_report_rejected=metrics.report_rejected,
    )
    port.start()
    return port


def annotate(server: TwinApiServer, node: str, text: str | None) -> None:
    client.CoreV1Api(api_client(server)).patch_node(node, {"metadata": {"annotations": {GPU_REPORT_ANNOTATION: text}}})


def rejected_count(metrics: MetricsObserver, reason: RejectReason) -> float:
    value = metrics.registry.get_sample_value("migopt_layout_source_rejected_total", {"reason": str(reason)})
    assert value is not None
    return value


def report_events(server: TwinApiServer, node: str, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The adapter's MigReportRejected Events on `node`, once `count` of them are written (a background thread)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with server.lock:
            events = [
                e.obj for e in server.store.items("events")
                if e.obj["reason"] == EventReason.REPORT_REJECTED and e.obj["involvedObject"]["name"] == node
            ]  # fmt: skip
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.02)


def phantom_served(plan: Plan) -> int:
    """Pods the plan places on a GPU it does not reconfigure: on this cluster, only a lie has such room."""
    reconfigured = {(g.node, g.index) for g in plan.gpus if g.reconfigure}
    return sum(1 for p in plan.placements for d in p.devices if (p.node, d.gpu) not in reconfigured)


def test_a_lying_report_is_rejected_and_no_longer_absorbs_demand(
    no_agent: TwinApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    server, metrics = no_agent, MetricsObserver()
    port = counted_adapter(server, metrics)
    try:
        api = api_client(server)
        for n in range(14):
            create_pod(api, f"infer-{n}", ONE_G)
        annotate(server, "node-1", phantom(time.time()).to_annotation())
        settle(port, server)
        caplog.set_level(logging.WARNING, logger="optimizer.kube.adapter")
        snap = port.snapshot()
        assert len(snap.pods) == 14

        # what the lie would have made of the plan without verification: all 14 "served", nothing reconfigured
        raw = port.nodes.get("node-1")
        assert raw is not None
        unverified = resolve_layout("node-1", raw["metadata"]["labels"], raw["metadata"]["annotations"],
                                    None, [], None)  # fmt: skip
        assert unverified.source is LayoutSource.AGENT
        fooled = make_plan(_with_gpus(snap, "node-1", unverified.gpus), name="greedy")
        assert fooled.objectives.served_pods == 14 and fooled.objectives.reconfigured_gpus == 0
        assert phantom_served(fooled) == 14

        # verified: rejected, counted, logged and recorded once; the node falls back to its config label
        assert port.sources == {"node-0": "conservative", "node-1": "conservative"}
        assert [g.mig_devices for g in _node(snap, "node-1").gpus] == [{"7g.80gb": 1}, {"7g.80gb": 1}]
        assert rejected_count(metrics, RejectReason.ALLOCATABLE_MISMATCH) == 1
        plan = make_plan(snap, name="greedy")
        assert phantom_served(plan) == 0
        assert plan.objectives.served_pods == 14 and plan.objectives.reconfigured_gpus > 0
        port.snapshot()  # the same lie on the next pass: nothing new
        assert rejected_count(metrics, RejectReason.ALLOCATABLE_MISMATCH) == 1
        logged = [r.getMessage() for r in caplog.records if "report_rejected" in r.getMessage()]
        assert len(logged) == 1 and "node=node-1" in logged[0] and "allocatable-mismatch" in logged[0]
        events = report_events(server, "node-1", 1)
        assert len(events) == 1 and events[0]["type"] == "Warning"
        assert "14x nvidia.com/mig-1g.10gb in the report, 0 allocatable" in events[0]["message"]

        # an impossible lie is another reason: counted and recorded again
        annotate(server, "node-1", phantom(time.time(), per_gpu=50).to_annotation())
        settle(port, server)
        port.snapshot()
        assert rejected_count(metrics, RejectReason.INFEASIBLE) == 1
        assert port.sources["node-1"] == "conservative"
        assert len(report_events(server, "node-1", 2)) == 2

        # the truth, freshly observed, is trusted again
        annotate(server, "node-1", honest(time.time()).to_annotation())
        settle(port, server)
        port.snapshot()
        assert port.sources["node-1"] == "agent"
        assert rejected_count(metrics, RejectReason.INFEASIBLE) == 1
    finally:
        port.stop()


def test_a_stale_report_is_rejected_when_its_agent_stops(
    no_agent: TwinApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, metrics = no_agent, MetricsObserver()
    port = counted_adapter(server, metrics)
    try:
        written_at = time.time()
        annotate(server, "node-1", honest(written_at).to_annotation())
        settle(port, server)
        port.snapshot()
        assert port.sources["node-1"] == "agent"
        monkeypatch.setattr(port, "now", lambda: written_at + 601)  # the agent published nothing since
        port.snapshot()
        assert port.sources["node-1"] == "conservative"
        assert rejected_count(metrics, RejectReason.STALE) == 1
        annotate(server, "node-0", honest(written_at + 601 + 3600).to_annotation())  # a clock far ahead
        settle(port, server)
        port.snapshot()
        assert rejected_count(metrics, RejectReason.FUTURE) == 1
        annotate(server, "node-0", honest(None).to_annotation())  # an agent from before reports had a time
        settle(port, server)
        port.snapshot()
        assert rejected_count(metrics, RejectReason.UNDATED) == 1
        assert port.sources["node-0"] == "conservative"
    finally:
        port.stop()


def _node(snap: ClusterSnapshot, name: str) -> Any:
    return next(n for n in snap.nodes if n.name == name)


def _with_gpus(snap: ClusterSnapshot, name: str, gpus: Any) -> ClusterSnapshot:
    nodes = [n.model_copy(update={"gpus": gpus}) if n.name == name else n for n in snap.nodes]
    return snap.model_copy(update={"nodes": nodes})


# ---- the twin's own reports stay trusted --------------------------------------------------------------------


def test_the_twins_reports_stay_fresh_over_simulated_hours(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four simulated hours at 10x: 24 wall minutes, four times the maximum age of a report that is never
    re-published. The facade re-renders each report every `report_refresh_s` wall seconds, so none goes stale."""
    wall = Clock(time.time())
    with TwinApiServer(cluster(2), speed=0) as server:
        server.bridge.wall_clock = wall
        port = adapter(server)
        monkeypatch.setattr(port, "now", wall)
        try:
            for _ in range(48):
                server.advance(300)  # 5 simulated minutes ...
                wall.now += 30  # ... in 30 wall seconds
                server.sync()
                settle(port, server)
                port.snapshot()
                assert set(port.sources.values()) == {"agent"}, port.sources
            assert server.twin.now() >= 4 * 3600
            for name in ("node-0", "node-1"):
                raw = port.nodes.get(name)
                assert raw is not None
                observed = parse_report(raw["metadata"]["annotations"][GPU_REPORT_ANNOTATION], name).observed_at
                assert observed is not None and wall.now - observed.timestamp() <= server.bridge.report_refresh_s
        finally:
            port.stop()


def test_the_twins_reports_carry_wall_time_not_simulated_time() -> None:
    """At 3600x, simulated time runs an hour ahead of the wall clock every second: reports stamped with it would
    be rejected as from the future. They carry wall time, which the adapter compares with its own."""
    with TwinApiServer(cluster(1), speed=3600, tick_s=0.01) as server:
        deadline = time.monotonic() + 30
        while server.twin.now() < 3600:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # a change re-renders the node (and its report) now, an hour of simulated time after the start
        client.CoreV1Api(api_client(server)).patch_node("node-0", {"metadata": {"labels": {"team": "x"}}})
        started = deadline - 30
        assert server.twin.now() - (time.monotonic() - started) > 3000  # simulated time, an hour ahead of wall time
        port = adapter(server)
        try:
            port.snapshot()
            assert port.sources == {"node-0": "agent"}
            raw = port.nodes.get("node-0")
            assert raw is not None
            observed = parse_report(raw["metadata"]["annotations"][GPU_REPORT_ANNOTATION], "node-0").observed_at
            assert observed is not None and abs(observed.timestamp() - time.time()) < 60
        finally:
            port.stop()


def test_a_reconfiguration_through_the_facade_is_checked_and_never_rejects_an_honest_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While mig-manager works, and while the device plugin restarts after it, the comparison with allocatable
    is skipped; in the steady states before and after it runs, and the twin's reports pass it."""
    steady: list[bool] = []
    original = layouts.steady_state

    def counting(labels: Any, checks: ReportChecks) -> bool:
        steady.append(original(labels, checks))
        return steady[-1]

    monkeypatch.setattr(layouts, "steady_state", counting)
    metrics = MetricsObserver()
    with TwinApiServer(cluster(1), speed=0) as server:
        port = counted_adapter(server, metrics)
        try:
            api = api_client(server)
            names = [f"infer-{n}" for n in range(3)]
            for name in names:
                create_pod(api, name, "nvidia.com/mig-1g.5gb")
            controller = mig_controller(port, ENFORCE)
            drive(controller, port, server, until=lambda: served(server, [f"team-b/{n}" for n in names]))
            port.snapshot()
            assert port.sources == {"node-0": "agent"}
        finally:
            port.stop()
    assert any(steady) and not all(steady)  # compared in steady states, skipped during the change
    assert all(rejected_count(metrics, reason) == 0 for reason in RejectReason)


def test_a_frozen_twin_restamps_its_reports_on_any_api_write() -> None:
    """At `speed=0` no clock thread syncs: a write through the API (a controller's lease renewal, an Event)
    re-stamps the reports that are due, so a controller watching a frozen twin keeps trusting them."""
    wall = Clock(time.time())

    def stamp(server: TwinApiServer) -> float:
        with server.lock:
            stored = server.store.get("nodes", "", "node-0")
        assert stored is not None
        observed = parse_report(stored.obj["metadata"]["annotations"][GPU_REPORT_ANNOTATION], "node-0").observed_at
        assert observed is not None
        return observed.timestamp()

    with TwinApiServer(cluster(1), speed=0) as server:
        server.bridge.wall_clock = wall
        before = stamp(server)
        v1 = client.CoreV1Api(api_client(server))
        wall.now += 30
        v1.create_namespaced_config_map("default", {"metadata": {"name": "a"}, "data": {}})
        assert stamp(server) == before  # not due yet: nothing re-rendered
        wall.now += 90
        v1.create_namespaced_config_map("default", {"metadata": {"name": "b"}, "data": {}})
        assert stamp(server) >= before + 119
