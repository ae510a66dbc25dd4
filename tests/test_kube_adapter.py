"""The Kubernetes adapter end to end against the twin's API facade (the real `kubernetes` client; a facade of
the API, not a kube-apiserver): snapshots, a full enforced reconfiguration, and the faults the API can throw."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from optimizer.actuators.node_record import PHASE
from optimizer.controller.actuator import Phase
from optimizer.kube.adapter import KubeClusterPort
from simulations.twin.api import FaultRule, TwinApiServer
from tests.controller_fixtures import mig_controller
from tests.kube_fixtures import ENFORCE, adapter, api_client, cluster, create_pod, drive, served, settle

ONE_G = "nvidia.com/mig-1g.5gb"


@pytest.fixture
def server() -> Iterator[TwinApiServer]:
    twin = cluster(2, held={"node-0": {0: {0: "team-a/train-0"}}})
    with TwinApiServer(twin, speed=0) as running:
        yield running


@pytest.fixture
def port(server: TwinApiServer) -> Iterator[KubeClusterPort]:
    started = adapter(server)
    yield started
    started.stop()


def test_the_snapshot_over_the_api_matches_the_twin(server: TwinApiServer, port: KubeClusterPort) -> None:
    create_pod(api_client(server), "infer-0", ONE_G)
    settle(port, server)
    snap = port.snapshot()
    truth = server.twin.snapshot()
    assert [(n.name, [g.layout_pairs for g in n.gpus]) for n in snap.nodes] == [
        (n.name, [g.layout_pairs for g in n.gpus]) for n in truth.nodes
    ]
    assert [(n.name, [sorted(g.holders) for g in n.gpus]) for n in snap.nodes] == [
        (n.name, [sorted(g.holders) for g in n.gpus]) for n in truth.nodes
    ]
    assert [p.name for p in snap.pods] == ["team-b/infer-0"]
    assert set(port.sources.values()) == {"agent"}


def test_without_the_agent_the_config_label_gives_layouts_and_busy_gpus_are_locked() -> None:
    twin = cluster(1, held={"node-0": {0: {0: "team-a/train-0"}}})
    with TwinApiServer(twin, speed=0, agent_annotations=False) as server:
        port = adapter(server)
        try:
            snap = port.snapshot()
            assert port.sources == {"node-0": "conservative"}
            assert [len(g.instances) for g in snap.nodes[0].gpus] == [2, 2]
            locked = {p.name for p in snap.running if not p.evictable}
            assert "team-a/train-0" in locked  # where it runs is a guess: never evicted on that basis
            assert all(any(i.pod for i in g.instances) for g in snap.nodes[0].gpus)
        finally:
            port.stop()


def test_enforce_serves_pending_pods_and_evicts_only_what_the_plan_named(
    server: TwinApiServer, port: KubeClusterPort
) -> None:
    api = api_client(server)
    names = [f"infer-{n}" for n in range(10)]
    for name in names:
        create_pod(api, name, ONE_G)
    controller = mig_controller(port, ENFORCE)
    drive(controller, port, server, until=lambda: served(server, [f"team-b/{n}" for n in names]))
    planned = {pod for plan in [controller.last_plan] if plan for g in plan.gpus for pod in g.evict}
    evicted = {e.pod for e in server.twin.evictions}
    assert evicted <= planned | {"team-a/train-0"}
    assert not any(n.unschedulable for n in server.twin.nodes.values())
    assert {n.annotations.get(PHASE) for n in server.twin.nodes.values()} <= {None, Phase.DONE}


@pytest.mark.parametrize("code", [409, 429, 500])
def test_every_write_failing_once_still_converges(server: TwinApiServer, port: KubeClusterPort, code: int) -> None:
    api = api_client(server)
    for n in range(8):
        create_pod(api, f"infer-{n}", ONE_G)
    for verb, resource in [("patch", "nodes"), ("create", "pods/eviction"), ("update", "configmaps"),
                           ("create", "configmaps"), ("create", "events")]:  # fmt: skip
        server.faults.add(FaultRule(verb=verb, resource=resource, code=code, count=2, retry_after_s=0))
    controller = mig_controller(port, ENFORCE)
    steps = 0

    def rearm(step: int) -> None:
        nonlocal steps
        steps = step
        if step % 3 == 0:  # keep failing writes throughout the change, not only at its start
            server.faults.add(FaultRule(verb="patch", resource="nodes", code=code, count=1, retry_after_s=0))

    drive(
        controller, port, server, until=lambda: served(server, [f"team-b/infer-{n}" for n in range(8)]), on_step=rearm
    )
    assert server.faults.fired, "the faults were never hit"
    assert not any(n.unschedulable for n in server.twin.nodes.values())


def test_a_closed_watch_resumes_and_an_expired_one_relists(server: TwinApiServer, port: KubeClusterPort) -> None:
    relists = port.nodes.relists
    with server.lock:
        server.store.close_watches()
    server.twin.patch_node("node-1", labels={"team": "x"})
    server.sync()
    settle(port, server)
    assert port.nodes.get("node-1")["metadata"]["labels"]["team"] == "x"  # type: ignore[index]
    with server.lock:
        server.store.expire_history()
        server.store.close_watches()
    server.twin.patch_node("node-1", labels={"team": "y"})
    server.sync()
    settle(port, server)
    assert port.nodes.relists > relists
    assert port.nodes.get("node-1")["metadata"]["labels"]["team"] == "y"  # type: ignore[index]


def test_an_rbac_denial_is_reported_once_naming_verb_and_resource(
    server: TwinApiServer, port: KubeClusterPort, caplog: pytest.LogCaptureFixture
) -> None:
    create_pod(api_client(server), "infer-0", ONE_G)
    server.faults.add(FaultRule(verb="patch", resource="nodes", code=403, count=1000))
    controller = mig_controller(port, ENFORCE)
    caplog.set_level(logging.ERROR)
    for _ in range(3):
        settle(port, server)
        with pytest.raises(Exception, match="RBAC denies patch nodes"):
            controller.tick()
    denials = [r for r in caplog.records if "RBAC denies verb=patch resource=nodes" in r.getMessage()]
    assert len(denials) == 1
    assert server.twin.evictions == []  # nothing evicted without the node's record of the plan
    assert not any(n.unschedulable for n in server.twin.nodes.values())


def test_a_node_deleted_mid_change_leaves_the_rest_converging(server: TwinApiServer, port: KubeClusterPort) -> None:
    api = api_client(server)
    for n in range(12):
        create_pod(api, f"infer-{n}", ONE_G)
    controller = mig_controller(port, ENFORCE)
    deleted: list[str] = []

    def delete_one_changing_node(step: int) -> None:
        if deleted:
            return
        for name, node in server.twin.nodes.items():
            if node.annotations.get(PHASE) in (Phase.EVICTING, Phase.LABELLING, Phase.APPLYING):
                from kubernetes import client

                client.CoreV1Api(api).delete_node(name)
                deleted.append(name)
                return

    def settled() -> bool:
        nodes = server.twin.nodes.values()
        return bool(deleted) and all(n.annotations.get(PHASE) in (None, Phase.DONE) for n in nodes)

    drive(controller, port, server, until=settled, on_step=delete_one_changing_node)
    assert deleted and deleted[0] not in server.twin.nodes
    assert not any(n.unschedulable for n in server.twin.nodes.values())


def test_a_broken_owned_configmap_is_reported_once_and_rewritten(
    server: TwinApiServer, port: KubeClusterPort, caplog: pytest.LogCaptureFixture
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api_client(server))
    core.patch_namespaced_config_map(
        "migopt-mig-config", "gpu-operator", {"data": {"config.yaml": "version: v1\nmig-configs: [not, a, map"}}
    )
    for n in range(7):
        create_pod(api_client(server), f"infer-{n}", ONE_G)
    caplog.set_level(logging.WARNING)
    controller = mig_controller(port, ENFORCE)
    drive(controller, port, server, until=lambda: served(server, [f"team-b/infer-{n}" for n in range(7)]))
    text = core.read_namespaced_config_map("migopt-mig-config", "gpu-operator").data["config.yaml"]
    assert "migopt-" in text and "[not, a, map" not in text
    invalid = [r for r in caplog.records if "invalid" in r.getMessage() and "config" in r.getMessage()]
    assert 1 <= len(invalid) <= 2  # the adapter's reading and the controller's rewrite, each once
