"""The adapter rebuilds its snapshot only where something changed (`optimizer.kube.snapshot_pieces`): a pass with
nothing new returns an equal snapshot made of the same pieces, and every change (pods created, bound, deleted; a
node relabelled; the owned config rewritten; an agent report going stale with nothing written at all) shows up
exactly as a snapshot built from scratch, by a second adapter on the same API, shows it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client

from nvidia_protocol.agent_report import GPU_REPORT_ANNOTATION, NodeGpuReport, parse_report
from nvidia_protocol.labels import MIG_STATE_LABEL
from optimizer.actuators.node_record import ChangeRecord
from optimizer.controller.actuator import Phase
from optimizer.kube.adapter import KubeClusterPort, KubeSettings
from optimizer.kube.api import ApiCaller
from optimizer.kube.layouts import DeviceHolder, ReportChecks, ReportRejected, check_fresh
from optimizer.kube.objects import pending_pod
from optimizer.kube.snapshot_pieces import report_verdict
from simulations.twin.api import TwinApiServer
from solver.errors import MigoptError
from solver.snapshot import ClusterSnapshot
from tests.kube_fixtures import adapter, api_client, cluster, create_pod, settle

ONE_G = "nvidia.com/mig-1g.5gb"
THREE_G = "nvidia.com/mig-3g.20gb"


@pytest.fixture(params=[True, False], ids=["agent", "no-agent"])
def server(request: pytest.FixtureRequest) -> Iterator[TwinApiServer]:
    """Three nodes; with node agent reports, or without (layouts from the config label and the bound pods)."""
    twin = cluster(3, held={"node-0": {0: {0: "team-a/train-0"}}})
    with TwinApiServer(twin, speed=0, agent_annotations=request.param) as running:
        yield running


@pytest.fixture
def ports(server: TwinApiServer) -> Iterator[tuple[KubeClusterPort, KubeClusterPort]]:
    """The adapter under test, and a second one whose every snapshot is built from scratch."""
    kept, fresh = adapter(server), adapter(server)
    yield kept, fresh
    kept.stop()
    fresh.stop()


def agree(ports: tuple[KubeClusterPort, KubeClusterPort], server: TwinApiServer) -> ClusterSnapshot:
    """The kept adapter's snapshot, checked against one built from scratch at the same moment."""
    kept, fresh = ports
    settle(kept, server)
    settle(fresh, server)
    taken = kept.snapshot()
    fresh._pod_pieces, fresh._node_pieces = {}, {}
    assert taken == fresh.snapshot()
    assert kept.sources == fresh.sources
    return taken


def by_name(snapshot: ClusterSnapshot) -> dict[str, object]:
    return {n.name: n for n in snapshot.nodes}


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_an_unchanged_pass_returns_an_equal_snapshot_from_the_same_pieces(
    server: TwinApiServer, ports: tuple[KubeClusterPort, KubeClusterPort]
) -> None:
    create_pod(api_client(server), "infer-0", ONE_G)
    first = agree(ports, server)
    second = ports[0].snapshot()
    assert second == first
    assert all(second.nodes[n] is first.nodes[n] for n in range(len(first.nodes)))  # reused, not rebuilt
    assert second.pods[0] is first.pods[0] and [p.name for p in second.pods] == ["team-b/infer-0"]
    for informer in (ports[0].nodes, ports[0].pods):
        informer.sync_once()  # a relist (as after a 410): equal copies of every object, nothing changed
    relisted = ports[0].snapshot()
    assert relisted == first and all(relisted.nodes[n] is first.nodes[n] for n in range(len(first.nodes)))
    assert relisted.pods[0] is first.pods[0]


def test_changed_pods_and_nodes_show_up_and_only_their_pieces_are_rebuilt(
    server: TwinApiServer, ports: tuple[KubeClusterPort, KubeClusterPort]
) -> None:
    api = api_client(server)
    core = client.CoreV1Api(api)
    before = agree(ports, server)
    assert before.pods == []

    create_pod(api, "infer-0", ONE_G)
    create_pod(api, "infer-1", ONE_G)
    snap = agree(ports, server)
    assert [p.name for p in snap.pods] == ["team-b/infer-0", "team-b/infer-1"]
    assert all(by_name(snap)[n] is by_name(before)[n] for n in by_name(before))  # no node changed

    core.patch_node("node-1", {"metadata": {"labels": {"team": "x"}}})
    relabelled = agree(ports, server)
    assert by_name(relabelled)["node-1"] is not by_name(snap)["node-1"]
    assert relabelled.nodes[1].labels["team"] == "x"
    assert by_name(relabelled)["node-2"] is by_name(snap)["node-2"]

    core.delete_namespaced_pod("infer-0", "team-b")
    assert [p.name for p in agree(ports, server).pods] == ["team-b/infer-1"]

    create_pod(api, "train-1", THREE_G)  # a free 3g.20gb exists: the twin's scheduler binds it
    server.advance(1)
    server.sync()
    bound = agree(ports, server)
    holders = {i.pod for n in bound.nodes for g in n.gpus for i in g.instances if i.pod}
    assert "team-b/train-1" in holders and "team-b/train-1" in {p.name for p in bound.running}
    assert bound.pods == relabelled.pods[1:]

    # the pod finishes and nothing else changes (the twin rewrites a node when a pod binds or goes: not here)
    for port in ports:
        pod = port.pods.get("team-b/train-1")
        assert pod is not None
        port.pods.apply({**pod, "status": {**pod["status"], "phase": "Succeeded"}})
    finished = agree(ports, server)
    assert "team-b/train-1" not in {i.pod for n in finished.nodes for g in n.gpus for i in g.instances}

    # the owned config names the nodes' config: without the agent, that is where layouts come from
    entry = "[{devices: all, mig-enabled: true, mig-devices: {1g.5gb: 7}}]"
    config = f"version: v1\nmig-configs: {{all-3g: {entry}}}\n"
    ports[0].write_mig_config(config)
    wait_for(lambda: ports[1].read_mig_config() == config)  # the other adapter learns it by its watch
    rewritten = agree(ports, server)
    layouts = {len(g.instances) for g in by_name(rewritten)["node-2"].gpus}  # type: ignore[attr-defined]
    assert layouts == ({2} if ports[0].sources["node-2"] == "agent" else {7})

    # a node whose layout cannot be known is left out while its change record says a drain is under way
    core.patch_node("node-2", {"metadata": {"labels": {MIG_STATE_LABEL: "pending"}}})
    assert "node-2" in by_name(agree(ports, server))
    draining = ChangeRecord(plan_id="p", phase=Phase.EVICTING, target="t", evict={}, expected={}, deadline=0)
    ports[0].write_record("node-2", draining.model_dump_json())
    wait_for(lambda: "node-2" in ports[1].read_records())
    waiting = agree(ports, server)
    agent = server.bridge.agent
    assert ("node-2" in by_name(waiting)) == agent and ports[0].sources["node-2"].startswith("waiting") != agent


@pytest.mark.parametrize("server", [True], ids=["agent"], indirect=True)
def test_an_agent_report_going_stale_or_fresh_with_nothing_written_shows_up(
    server: TwinApiServer, ports: tuple[KubeClusterPort, KubeClusterPort], monkeypatch: pytest.MonkeyPatch
) -> None:
    kept, fresh = ports
    agree(ports, server)
    raw = kept.nodes.get("node-2")
    assert raw is not None
    observed = parse_report(raw["metadata"]["annotations"][GPU_REPORT_ANNOTATION], "node-2").observed_at
    assert observed is not None
    at = observed.timestamp()
    age, skew = kept.settings.report_max_age_s, kept.settings.report_max_skew_s
    moments = [at, at + age, at + age + 0.001, at + age, at - skew, at - skew - 0.001, at]
    expected = ["agent", "agent", "conservative", "agent", "agent", "conservative", "agent"]
    for now, source in zip(moments, expected, strict=True):
        monkeypatch.setattr(kept, "now", lambda now=now: now)
        monkeypatch.setattr(fresh, "now", lambda now=now: now)
        agree(ports, server)
        assert kept.sources["node-2"] == source, now - at


_seconds = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False)


@given(observed=_seconds, now=_seconds, age=st.floats(0.001, 1e4), skew=st.floats(0, 1e4))
def test_the_verdict_a_piece_is_kept_on_is_check_freshs(observed: float, now: float, age: float, skew: float) -> None:
    report = NodeGpuReport(observed_at=datetime.fromtimestamp(observed + 1.7e9, UTC))
    assert report.observed_at is not None
    checks = ReportChecks(now=now + 1.7e9, max_age_s=age, max_skew_s=skew)
    try:
        check_fresh(report, checks)
        reason = "fresh"
    except ReportRejected as err:
        reason = str(err.reason)
    assert report_verdict(report.observed_at.timestamp(), checks.now, age, skew) == reason


def test_dcgm_holders_appearing_show_up() -> None:
    """Without the agent, where a bound pod runs comes from dcgm's series when Prometheus knows it: a change there
    alone (no API object changed) changes the node's layout source."""
    seen: list[DeviceHolder] | None = None
    twin = cluster(2, held={"node-0": {0: {0: "team-a/train-0"}}})
    with TwinApiServer(twin, speed=0, agent_annotations=False) as server:
        made = [
            KubeClusterPort(api_client(server), KubeSettings(event_qps=0), caller=ApiCaller(), holders=lambda: seen)
            for _ in range(2)
        ]
        ports = (made[0], made[1])
        for port in ports:
            port.start()
        try:
            assert agree(ports, server) and ports[0].sources["node-0"] == "conservative"
            seen = [DeviceHolder(node="node-0", gpu=0, profile="3g.20gb", pod="team-a/train-0")]
            agree(ports, server)
            assert ports[0].sources["node-0"] == "prometheus"
            seen = None
            agree(ports, server)
            assert ports[0].sources["node-0"] == "conservative"
        finally:
            for port in ports:
                port.stop()


_limits = st.dictionaries(
    st.sampled_from([ONE_G, THREE_G, "nvidia.com/mig-9g.1gb"]), st.sampled_from(["1", "2", "0", "x"]), max_size=2
)
_pod_specs = st.fixed_dictionaries(
    {
        "priority": st.sampled_from([None, 0, 100, "7", 2**40]),
        "nodeSelector": st.sampled_from([None, {}, {"pool": "a"}, {"pool": "b"}]),
        "tolerations": st.sampled_from([None, [{"key": "dedicated", "operator": "Exists"}]]),
        "containers": st.lists(
            st.fixed_dictionaries({"name": st.just("main"), "resources": st.fixed_dictionaries({"limits": _limits})}),
            min_size=1,
            max_size=2,
        ),
    }
)


@given(specs=st.lists(_pod_specs, min_size=1, max_size=12))
def test_replicas_share_a_validated_template_and_read_as_each_would_alone(specs: list[dict[str, object]]) -> None:
    port = KubeClusterPort(client.ApiClient(client.Configuration(host="http://127.0.0.1:9")))
    for n, spec in enumerate(specs * 2):  # every spec twice: the second time from the template
        pod = {"metadata": {"name": f"p{n}", "namespace": "ns"}, "spec": spec}
        try:
            alone: object = pending_pod(pod)
        except MigoptError as err:
            alone = str(err)
        try:
            shared: object = port._pending(pod)
        except MigoptError as err:
            shared = str(err)
        assert shared == alone
