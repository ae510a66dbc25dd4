"""NVIDIA's GPU DRA driver, seen through resource.k8s.io/v1 with the real `kubernetes` client against the twin's API
facade: its nodes are unmanaged (never reconfigured), the devices its allocated claims hold are busy and their pods
never evicted, unreadable slices and claims are skipped and counted, and a cluster without the API works as before.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes import client

from nvidia_protocol.agent_report import GPU_REPORT_ANNOTATION, parse_report
from optimizer.kube.adapter import KubeClusterPort, KubeSettings
from optimizer.kube.api import ApiCaller
from optimizer.kube.dra import (
    DRIVER,
    DraDevice,
    DraHold,
    Unreadable,
    claim_of_driver,
    parse_claim,
    parse_slice,
    place_holds,
    slice_of_driver,
)
from simulations.twin.api import FaultRule, TwinApiServer
from solver.catalog import load_catalog
from solver.plan import Plan
from solver.planner import make_plan
from solver.protection import Protection
from solver.snapshot import ClusterSnapshot, GpuState, InstanceState, PendingPod
from tests.kube_fixtures import adapter, api_client, cluster, settle
from tests.twin_api_fixtures import kubectl_run, twin_serve

THREE_G = "nvidia.com/mig-3g.20gb"
PROFILE_ID = load_catalog().model("A100-40GB").profile("3g.20gb").id
MINOR_OFFSET = 4  # the driver names GPUs by device minor, which need not be the NVML index: here it never is


@pytest.fixture
def server() -> Iterator[TwinApiServer]:
    """Two A100-40GB nodes of two GPUs split 2 x 3g.20gb; `team-a/train-1` holds node-0 GPU 1 at slice 0."""
    with TwinApiServer(cluster(2, held={"node-0": {1: {0: "team-a/train-1"}}}), speed=0) as running:
        yield running


@pytest.fixture
def port(server: TwinApiServer) -> Iterator[KubeClusterPort]:
    started = adapter(server)
    yield started
    started.stop()


# ---- objects as NVIDIA's driver and the scheduler write them ------------------------------------------------------


def gpu_uuids(server: TwinApiServer, node: str) -> dict[int, str]:
    """GPU index -> UUID, from the node agent's report on the node (what the driver's `parentUUID` names)."""
    meta = client.CoreV1Api(api_client(server)).read_node(node).metadata
    report = parse_report(meta.annotations[GPU_REPORT_ANNOTATION], node)
    return {gpu.index: gpu.uuid for gpu in report.gpus}


def driver_slice(node: str, uuids: dict[int, str], name: str | None = None) -> dict[str, Any]:
    """The driver's slice for a node: per GPU the whole GPU and a dynamic 3g.20gb device per placement."""
    devices: list[dict[str, Any]] = []
    for index, uuid in sorted(uuids.items()):
        minor = index + MINOR_OFFSET
        devices.append({"name": f"gpu-{minor}", "attributes": {"type": {"string": "gpu"}, "uuid": {"string": uuid}}})
        for start in (0, 4):
            attributes = {"type": {"string": "mig"}, "profile": {"string": "3g.20gb"}, "parentUUID": {"string": uuid}}
            devices.append({"name": f"gpu-{minor}-mig-3g20gb-{PROFILE_ID}-{start}", "attributes": attributes})
    return {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
        "metadata": {"name": name or f"{node}-{DRIVER}-abcde"},
        "spec": {"driver": DRIVER, "nodeName": node, "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                 "devices": devices},
    }  # fmt: skip


def mig_device(index: int, start: int) -> str:
    return f"gpu-{index + MINOR_OFFSET}-mig-3g20gb-{PROFILE_ID}-{start}"


def allocated_claim(
    name: str, node: str, devices: list[str], pods: list[str], namespace: str = "team-a"
) -> dict[str, Any]:
    """A claim the scheduler allocated on `node` and reserved for `pods`."""
    results = [{"request": "gpu", "driver": DRIVER, "pool": node, "device": d} for d in devices]
    selector = {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}
    return {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "mig.nvidia.com"}}]}},
        "status": {
            "allocation": {"devices": {"results": results}, "nodeSelector": selector},
            "reservedFor": [{"resource": "pods", "name": pod, "uid": f"uid-{pod}"} for pod in pods],
        },
    }  # fmt: skip


def create(server: TwinApiServer, obj: dict[str, Any]) -> None:
    resource = client.ResourceV1Api(api_client(server))
    if obj["kind"] == "ResourceSlice":
        resource.create_resource_slice(obj, _preload_content=False)
        return
    namespace = obj["metadata"]["namespace"]
    core = client.CoreV1Api(api_client(server))
    if namespace not in {n.metadata.name for n in core.list_namespace().items}:
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    resource.create_namespaced_resource_claim(namespace, obj, _preload_content=False)


def post_raw(server: TwinApiServer, obj: dict[str, Any]) -> None:
    """Store an object the client would refuse to send (it validates bodies): what a buggy writer could leave."""
    namespace = obj["metadata"].get("namespace")
    where = f"namespaces/{namespace}/resourceclaims" if namespace else "resourceslices"
    request = urllib.request.Request(f"{server.url}/apis/resource.k8s.io/v1/{where}", data=json.dumps(obj).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201


def dra_settled(port: KubeClusterPort, server: TwinApiServer) -> None:
    """Wait until the adapter's claim and slice caches hold what the facade stores (what they keep of it)."""
    pairs = ((port.claims, "resourceclaims.resource.k8s.io", claim_of_driver),
             (port.slices, "resourceslices.resource.k8s.io", slice_of_driver))  # fmt: skip

    def versions() -> tuple[list[set[str]], list[set[str]]]:
        with server.lock:
            want = [{s.obj["metadata"]["resourceVersion"] for s in server.store.items(key) if keep(s.obj)}
                    for _, key, keep in pairs]  # fmt: skip
        have = [{o["metadata"]["resourceVersion"] for o in informer.items()} for informer, _, _ in pairs]
        return want, have

    wait_until(lambda: versions()[0] == versions()[1])
    settle(port, server)


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the adapter's caches did not catch up with the facade")
        time.sleep(0.01)


def plans(snapshot: ClusterSnapshot, count: int, resource: str) -> list[Plan]:
    """Both policies' plans of the adapter's snapshot with `count` high-priority pods pending for `resource` (added
    to the snapshot: the twin's scheduler knows nothing of claims, and would bind them to the claimed devices)."""
    waiting = [PendingPod(name=f"team-b/wants-{n}", requests={resource: 1}, priority=1000) for n in range(count)]
    with_demand = snapshot.model_copy(update={"pods": waiting})
    return [make_plan(with_demand, name="greedy"), make_plan(with_demand, name="optimal")]


# ---- nodes of the driver ------------------------------------------------------------------------------------------


def test_a_node_with_the_drivers_slice_is_unmanaged_and_no_plan_reconfigures_it(
    server: TwinApiServer, port: KubeClusterPort
) -> None:
    create(server, driver_slice("node-1", gpu_uuids(server, "node-1")))
    dra_settled(port, server)
    snapshot = port.snapshot()
    unmanaged = {n.name: n.unmanaged for n in snapshot.nodes}
    assert unmanaged == {"node-0": None, "node-1": f"GPUs managed by the DRA driver {DRIVER} (ResourceSlice "
                                                   f"node-1-{DRIVER}-abcde)"}  # fmt: skip
    for plan in plans(snapshot, 4, "nvidia.com/mig-7g.40gb"):  # whole GPUs: each pod needs a GPU rebuilt
        rebuilt = {(g.node, g.index) for g in plan.gpus if g.reconfigure}
        assert ("node-0", 0) in rebuilt and {node for node, _ in rebuilt} == {"node-0"}
        assert not [g for g in plan.gpus if g.node == "node-1" and (g.reconfigure or g.evict)]
        assert len(plan.unplaced) >= 2  # node-1's idle GPUs would have served two of them
    # The slice goes (the driver was removed from the node): the node is migopt's again.
    client.ResourceV1Api(api_client(server)).delete_resource_slice(f"node-1-{DRIVER}-abcde", _preload_content=False)
    dra_settled(port, server)
    assert {n.name: n.unmanaged for n in port.snapshot().nodes} == {"node-0": None, "node-1": None}


def test_an_allocated_claim_makes_its_device_busy_and_its_pod_never_evicted(
    server: TwinApiServer, port: KubeClusterPort
) -> None:
    create(server, driver_slice("node-0", gpu_uuids(server, "node-0")))
    create(server, allocated_claim("infer-claim", "node-0", [mig_device(0, 4)], ["infer-0"]))
    # a pod holding a device-plugin instance and, through a claim, another one
    create(server, allocated_claim("train-claim", "node-0", [mig_device(1, 4)], ["train-1"]))
    dra_settled(port, server)
    snapshot = port.snapshot()
    node = next(n for n in snapshot.nodes if n.name == "node-0")
    holders = [[(i.start, i.pod) for i in g.instances] for g in node.gpus]
    assert holders == [[(0, None), (4, "team-a/infer-0")], [(0, "team-a/train-1"), (4, "team-a/train-1")]]
    running = snapshot.running_by_name
    assert running["team-a/infer-0"].protection is Protection.DRA_CLAIM and not running["team-a/infer-0"].evictable
    assert running["team-a/infer-0"].uid == "uid-infer-0"
    assert running["team-a/train-1"].protection is Protection.DRA_CLAIM  # the claim outranks its being evictable
    for plan in plans(snapshot, 6, THREE_G):
        assert not [g for g in plan.gpus if g.node == "node-0" and (g.reconfigure or g.evict)]
        on_node_0 = [(d.gpu, d.start) for p in plan.placements if p.node == "node-0" for d in p.devices]
        assert on_node_0 == [(0, 0)]  # the one free instance there; the claimed ones are not offered
        assert len(plan.placements) == 5 and len(plan.unplaced) == 1


def test_a_claim_not_reserved_yet_still_takes_its_device(server: TwinApiServer, port: KubeClusterPort) -> None:
    create(server, driver_slice("node-0", gpu_uuids(server, "node-0")))
    create(server, allocated_claim("soon", "node-0", [mig_device(0, 0)], []))
    dra_settled(port, server)
    snapshot = port.snapshot()
    assert snapshot.nodes[0].gpus[0].instances[0].pod == "dra-claim:team-a/soon"
    assert snapshot.running_by_name["dra-claim:team-a/soon"].protection is Protection.DRA_CLAIM


def test_without_the_agents_uuids_every_gpu_of_the_node_is_taken_as_busy(caplog: pytest.LogCaptureFixture) -> None:
    """The driver names GPUs by minor number, which is not the index migopt plans with: without the node agent's
    UUIDs the device cannot be placed, so no instance of the node is offered."""
    with TwinApiServer(cluster(1), speed=0, agent_annotations=False) as server:
        port = adapter(server)
        try:
            create(server, driver_slice("node-0", {0: "GPU-unknown-0", 1: "GPU-unknown-1"}))
            create(server, allocated_claim("infer-claim", "node-0", [mig_device(0, 4)], ["infer-0"]))
            dra_settled(port, server)
            with caplog.at_level(logging.INFO, logger="optimizer.kube.adapter"):
                snapshot = port.snapshot()
                port.snapshot()
        finally:
            port.stop()
    assert {i.pod for g in snapshot.nodes[0].gpus for i in g.instances} == {"team-a/infer-0"}
    notes = [r.getMessage() for r in caplog.records if "dra:" in r.getMessage()]
    assert len(notes) == 1 and "every GPU of the node taken as busy" in notes[0]


# ---- untrusted objects --------------------------------------------------------------------------------------------


def test_unreadable_slices_and_claims_are_skipped_logged_and_counted_once(
    server: TwinApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[tuple[str, str]] = []
    port = KubeClusterPort(
        api_client(server), KubeSettings(watch_timeout_s=30, sync_timeout_s=10, event_qps=0),
        caller=ApiCaller(backoff_s=0.01, max_backoff_s=0.05), on_dra_skipped=lambda *a: heard.append(a),
    )  # fmt: skip
    port.start()
    try:
        broken_devices = driver_slice("node-1", gpu_uuids(server, "node-1"), name="broken-devices")
        broken_devices["spec"]["devices"] = [{"name": 7}]
        post_raw(server, broken_devices)
        no_driver = {"driver": ["gpu.nvidia.com"], "pool": {"name": "x"}}
        post_raw(server, {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                          "metadata": {"name": "no-driver"}, "spec": no_driver})  # fmt: skip
        nobody = allocated_claim("nobody", "node-0", [mig_device(0, 0)], ["x"])
        nobody["status"]["reservedFor"] = [{"resource": "pods", "uid": "no-name"}]
        create(server, allocated_claim("other", "node-0", [], ["z"]))  # the namespace, and a claim of no GPU
        post_raw(server, nobody)
        nowhere = allocated_claim("nowhere", "node-0", ["gpu-9-mig-3g20gb-9-0"], ["y"])
        del nowhere["status"]["allocation"]["nodeSelector"]
        create(server, nowhere)
        dra_settled(port, server)
        with caplog.at_level(logging.WARNING, logger="optimizer.kube.adapter"):
            snapshot = port.snapshot()
            port.snapshot()
    finally:
        port.stop()
    assert set(port.dra_skipped) == {
        "resourceslices/broken-devices", "resourceslices/no-driver", "resourceclaims/team-a/nobody",
        "resourceclaims/team-a/nowhere",
    }  # fmt: skip
    assert "devices unreadable" in port.dra_skipped["resourceslices/broken-devices"]
    assert "reservedFor" in port.dra_skipped["resourceclaims/team-a/nobody"]
    assert "in no ResourceSlice" in port.dra_skipped["resourceclaims/team-a/nowhere"]
    assert port.dra_skipped_total == {"resourceslices": 2, "resourceclaims": 2}
    assert sorted(r for r, _ in heard) == ["resourceclaims", "resourceclaims", "resourceslices", "resourceslices"]
    assert len([r for r in caplog.records if "skipped:" in r.getMessage()]) == 4  # once each, not once a pass
    # a slice of the driver whose devices cannot be read still marks its node
    assert {n.name: n.unmanaged is not None for n in snapshot.nodes} == {"node-0": False, "node-1": True}


# ---- clusters without resource.k8s.io/v1 --------------------------------------------------------------------------


def test_a_cluster_without_the_resource_api_works_as_before(
    server: TwinApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    for resource in ("resourceclaims", "resourceslices"):
        server.faults.add(FaultRule(verb="list", resource=resource, code=404, count=100))
    with caplog.at_level(logging.INFO, logger="optimizer.kube.informer"):
        port = adapter(server)
        try:
            assert port.synced and port.claims.served is False and port.slices.served is False
            snapshot = port.snapshot()
            port.sync_once()  # the one-shot path (`migopt snapshot`) too
        finally:
            port.stop()
    assert [n.unmanaged for n in snapshot.nodes] == [None, None]
    assert {p.name: p.protection for p in snapshot.running} == {"team-a/train-1": None}
    said = [r.getMessage() for r in caplog.records if "not served" in r.getMessage()]
    assert sorted(said) == [f"resource={r} is not served by this cluster (404): reading nothing from it"
                            for r in ("resourceclaims", "resourceslices")]  # fmt: skip


def test_a_cluster_that_starts_serving_the_resource_api_is_read_from_then(server: TwinApiServer) -> None:
    """Asked again every watch timeout: an upgraded cluster needs no restart of migopt to be read."""
    for resource in ("resourceclaims", "resourceslices"):
        server.faults.add(FaultRule(verb="list", resource=resource, code=404, count=1))
    port = KubeClusterPort(
        api_client(server), KubeSettings(watch_timeout_s=1, sync_timeout_s=10, event_qps=0),
        caller=ApiCaller(backoff_s=0.01, max_backoff_s=0.05),
    )  # fmt: skip
    port.start()
    try:
        assert [f["code"] for f in server.faults.fired] == [404, 404]  # the first lists found nothing served
        create(server, driver_slice("node-0", gpu_uuids(server, "node-0")))
        wait_until(lambda: bool(port.slices.served and port.claims.served))
        dra_settled(port, server)
        assert [n.unmanaged is not None for n in port.snapshot().nodes] == [True, False]
    finally:
        port.stop()


# ---- kubectl against `migopt twin serve` --------------------------------------------------------------------------


def test_kubectl_lists_resourceclaims_and_resourceslices_of_twin_serve(tmp_path: Path) -> None:
    with twin_serve(tmp_path) as (_, config):
        manifests = tmp_path / "dra.yaml"
        manifests.write_text(
            f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: team-a}}\n---\n"
            f"apiVersion: resource.k8s.io/v1\nkind: ResourceClaim\nmetadata: {{name: infer, namespace: team-a}}\n"
            f"spec:\n  devices:\n    requests:\n    - name: gpu\n      exactly: {{deviceClassName: mig.nvidia.com}}\n"
            f"---\napiVersion: resource.k8s.io/v1\nkind: ResourceSlice\nmetadata: {{name: node-0-gpu}}\n"
            f"spec: {{driver: {DRIVER}, nodeName: node-0, pool: {{name: node-0, generation: 1, "
            f"resourceSliceCount: 1}}, devices: [{{name: gpu-0}}]}}\n",
            encoding="utf-8",
        )
        created = kubectl_run(config, "create", "-f", str(manifests))
        assert created.returncode == 0, created.stderr
        claims = kubectl_run(config, "get", "resourceclaims", "-A")
        assert claims.returncode == 0, claims.stderr
        lines = claims.stdout.splitlines()
        assert lines[0].split() == ["NAMESPACE", "NAME", "STATE", "AGE"]
        assert lines[1].split()[:3] == ["team-a", "infer", "pending"]
        slices = kubectl_run(config, "get", "resourceslices")
        assert slices.returncode == 0, slices.stderr
        assert [line.split()[:4] for line in slices.stdout.splitlines()] == [
            ["NAME", "NODE", "DRIVER", "POOL"], ["node-0-gpu", "node-0", DRIVER, "node-0"]
        ]  # fmt: skip


# ---- invariants of the pure parts ---------------------------------------------------------------------------------

FIELDS = ["driver", "nodeName", "pool", "name", "devices", "attributes", "type", "string", "allocation", "results",
          "device", "reservedFor", "resource", "uid", "nodeSelector", "nodeSelectorTerms", "matchFields", "key",
          "operator", "values", "adminAccess"]  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.sampled_from([DRIVER, "pods", "node-0"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(spec=JSON, status=JSON)
def test_any_json_reads_as_a_slice_or_claim_or_as_one_unreadable_line(spec: Any, status: Any) -> None:
    """Whatever a writer stored: the informers' filters answer, and parsing returns or says why in one line."""
    obj = {"metadata": {"name": "x", "namespace": "ns"}, "spec": spec, "status": status}
    slice_of_driver(obj)
    claim_of_driver(obj)
    for parse in (parse_slice, parse_claim):
        try:
            parse(obj)
        except Unreadable as err:
            assert "\n" not in str(err)


LAYOUT = [
    GpuState(index=index, model="A100-40GB", instances=[
        InstanceState(profile="3g.20gb", start=0, pod="team-a/kept" if index == 1 else None),
        InstanceState(profile="3g.20gb", start=4),
    ])
    for index in (0, 1)
]  # fmt: skip
REPORT = parse_report(
    json.dumps({"gpus": [{"index": i, "uuid": f"GPU-{i}", "name": "A100", "pci_device_id": "0x20F110DE",
                          "mig_current": True, "mig_pending": True} for i in (0, 1)]}),
    "node-0",
)  # fmt: skip
DEVICES = st.builds(
    DraDevice,
    name=st.sampled_from([mig_device(0, 0), mig_device(1, 4), "gpu-4", "gpu-5-mig-x-1-9", "weird"]),
    type=st.sampled_from([None, "gpu", "mig", "nic"]),
    profile=st.sampled_from([None, "3g.20gb", "1g.5gb", "no-such"]),
    uuid=st.sampled_from([None, "GPU-0", "GPU-1", "GPU-9"]),
    parent_uuid=st.sampled_from([None, "GPU-0", "GPU-1", "GPU-9"]),
)


HOLDS = st.builds(
    DraHold, holder=st.sampled_from(["a/p", "b/q"]), claim=st.sampled_from(["a/c", "b/d"]), device=st.none() | DEVICES
)


@settings(max_examples=200, deadline=None)
@given(holds=st.lists(HOLDS, max_size=4), with_report=st.booleans())
def test_claimed_devices_only_ever_take_free_instances(holds: list[DraHold], with_report: bool) -> None:
    """Placing holds never changes a layout, never takes an instance from its holder, gives every instance it takes
    to a hold's pod, and notes at most one line per hold (the ones it places only conservatively)."""
    placed, notes = place_holds(LAYOUT, holds, REPORT if with_report else None)
    assert [g.layout_pairs for g in placed] == [g.layout_pairs for g in LAYOUT]
    for before, after in zip(LAYOUT, placed, strict=True):
        for old, new in zip(before.instances, after.instances, strict=True):
            assert new.pod == old.pod if old.pod else new.pod in {None, *(h.holder for h in holds)}
    taken = sum(1 for g in placed for i in g.instances if i.pod) - 1
    assert (taken > 0) == bool(holds)  # every hold takes something: a GPU of this node has a free instance
    assert len(notes) <= len(holds)
