"""The twin's Kubernetes API facade, driven by the official `kubernetes` client (manual clock: speed 0)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from nvidia_protocol.agent_report import GPU_REPORT_ANNOTATION, parse_report
from simulations.twin.api import FaultRequest, FaultRule, TwinApiServer
from tests.twin_api_fixtures import ONE_G, THREE_G, kube_client, small_twin
from tests.twin_fixtures import CONFIG


@pytest.fixture
def server() -> Iterator[TwinApiServer]:
    with TwinApiServer(small_twin(), speed=0) as running:
        yield running


@pytest.fixture
def api(server: TwinApiServer) -> Iterator[client.ApiClient]:
    with kube_client(server.url) as api_client:
        yield api_client


def pod_body(name: str, requests: dict[str, int], **extra: Any) -> dict[str, Any]:
    resources = {k: str(v) for k, v in requests.items()}
    meta = {"name": name} | extra.pop("metadata", {})
    spec = {"containers": [{"name": "c", "image": "x", "resources": {"limits": resources}}]} | extra
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def http(server: TwinApiServer, path: str, body: Any = None, method: str | None = None) -> tuple[int, Any, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.url + path, data=data, method=method or ("POST" if data else "GET"))
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def status_of(err: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(err.body)
    return body


# ---- discovery and errors --------------------------------------------------------------------------------


def test_discovery_documents_and_unknown_paths(server: TwinApiServer) -> None:
    code, version, _ = http(server, "/version")
    assert code == 200 and version["major"] == "1"
    _, core, _ = http(server, "/api/v1")
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["nodes"]["shortNames"] == ["no"] and not by_name["nodes"]["namespaced"]
    assert by_name["pods"]["kind"] == "Pod" and by_name["pods"]["singularName"] == "pod"
    assert by_name["configmaps"]["shortNames"] == ["cm"] and by_name["pods/eviction"]["verbs"] == ["create"]
    # as kube-apiserver lists it: kubectl drain evicts only when the subresource names its group and version
    assert {k: by_name["pods/eviction"].get(k) for k in ("group", "version", "kind")} == {
        "group": "policy", "version": "v1", "kind": "Eviction"
    }
    assert "group" not in by_name["pods"]
    _, groups, _ = http(server, "/apis")
    names = {g["name"] for g in groups["groups"]}
    assert names == {"policy", "coordination.k8s.io", "events.k8s.io", "resource.k8s.io"}
    _, policy, _ = http(server, "/apis/policy/v1")
    assert policy["resources"][0]["shortNames"] == ["pdb"]
    _, dra, _ = http(server, "/apis/resource.k8s.io/v1")
    assert {r["name"]: r["namespaced"] for r in dra["resources"]} == {"resourceclaims": True, "resourceslices": False}
    for path in ("/apis/apps/v1", "/api/v1/widgets", "/openapi/v3/apis/apps/v1", "/api/v1/nodes/x/y/z"):
        code, body, _ = http(server, path)
        assert code == 404 and body["kind"] == "Status" and body["reason"] == "NotFound", path


# ---- nodes -----------------------------------------------------------------------------------------------


def test_nodes_carry_gfd_labels_resources_and_the_agent_report(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    nodes = v1.list_node()
    assert [n.metadata.name for n in nodes.items] == ["node-a", "node-b"] and int(nodes.metadata.resource_version) > 0
    node = v1.read_node("node-a")
    labels = node.metadata.labels
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB" and labels["nvidia.com/gpu.count"] == "2"
    assert labels["nvidia.com/mig-3g.20gb.count"] == "4" and labels["nvidia.com/mig.strategy"] == "mixed"
    assert labels["nvidia.com/mig.capable"] == "true" and labels["nvidia.com/mig.config.state"] == "success"
    assert node.status.allocatable[THREE_G] == "4" and node.status.capacity["cpu"] == "64"
    assert node.status.conditions[0].type == "Ready" and node.status.conditions[0].status == "True"
    assert node.status.node_info.kubelet_version.startswith("v1.") and node.metadata.uid
    report = parse_report(node.metadata.annotations[GPU_REPORT_ANNOTATION], "node-a")
    first = report.gpus[0].instances
    assert [(i.profile, i.start, i.size, i.busy, i.pod) for i in first] == [
        ("3g.20gb", 0, 4, True, "team-a/train-0"), ("3g.20gb", 4, 4, False, None),
    ]  # fmt: skip
    assert first[0].profile_id == 9 and report.gpus[0].pci_device_id == "0x20B010DE"


def test_agent_annotations_can_be_turned_off() -> None:
    with TwinApiServer(small_twin(), speed=0, agent_annotations=False) as server:
        _, node, _ = http(server, "/api/v1/nodes/node-a")
        assert GPU_REPORT_ANNOTATION not in node["metadata"].get("annotations", {})


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("pool=b", ["node-b"]), ("pool==b", ["node-b"]), ("pool!=b", ["node-a"]), ("pool in (a,b)", ["node-b"]),
        ("pool notin (b)", ["node-a"]), ("pool", ["node-b"]), ("!pool", ["node-a"]),
        ("nvidia.com/mig.capable=true,pool", ["node-b"]),
    ],
)  # fmt: skip
def test_label_selectors(api: client.ApiClient, selector: str, names: list[str]) -> None:
    assert [n.metadata.name for n in client.CoreV1Api(api).list_node(label_selector=selector).items] == names


def test_field_selectors_and_an_unsupported_field(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_pod("default", pod_body("waits", {ONE_G: 1}))
    on_a = v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-a").items
    assert [p.metadata.name for p in on_a] == ["train-0"]
    pending = v1.list_pod_for_all_namespaces(field_selector="status.phase=Pending").items
    assert [p.metadata.name for p in pending] == ["waits"]
    assert [p.metadata.name for p in v1.list_namespaced_pod("team-a").items] == ["train-0"]
    assert [n.metadata.name for n in v1.list_node(field_selector="metadata.name!=node-a").items] == ["node-b"]
    with pytest.raises(ApiException) as err:
        v1.list_node(field_selector="spec.podCIDR=x")
    assert err.value.status == 400 and status_of(err.value)["kind"] == "Status"


def test_cordon_patch_merge_removal_and_json_patch(api: client.ApiClient, server: TwinApiServer) -> None:
    v1 = client.CoreV1Api(api)
    v1.patch_node("node-b", {"spec": {"unschedulable": True}, "metadata": {"labels": {"team": "x"}}})
    assert server.twin.node("node-b").unschedulable and server.twin.node("node-b").labels["team"] == "x"
    node = v1.read_node("node-b")
    assert node.spec.unschedulable and any(t.key == "node.kubernetes.io/unschedulable" for t in node.spec.taints)
    v1.patch_node("node-b", {"metadata": {"labels": {"team": None}}})
    assert "team" not in server.twin.node("node-b").labels
    status, _, _ = http(server, "/api/v1/nodes/node-b", method="PATCH")  # no body, no patch type
    assert status == 415
    request = urllib.request.Request(
        server.url + "/api/v1/nodes/node-b", method="PATCH",
        data=json.dumps([{"op": "replace", "path": "/spec/unschedulable", "value": False}]).encode(),
        headers={"Content-Type": "application/json-patch+json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert not server.twin.node("node-b").unschedulable
    with pytest.raises(ApiException) as err:
        v1.patch_node("node-b", {"metadata": {"labels": {"bad": "no spaces allowed"}}})
    assert err.value.status == 422 and status_of(err.value)["reason"] == "Invalid"


def test_relabel_drives_the_mig_manager(api: client.ApiClient, server: TwinApiServer) -> None:
    v1 = client.CoreV1Api(api)
    v1.patch_node("node-b", {"metadata": {"labels": {"nvidia.com/mig.config": "all-1g"}}})
    state = "nvidia.com/mig.config.state"
    server.advance(6)
    assert v1.read_node("node-b").metadata.labels[state] == "pending"
    server.advance(200)
    node = v1.read_node("node-b")
    assert node.metadata.labels[state] == "success" and node.status.allocatable[ONE_G] == "7"
    assert node.status.allocatable[THREE_G] == "0" and node.metadata.labels["nvidia.com/mig-1g.5gb.count"] == "7"
    report = parse_report(node.metadata.annotations[GPU_REPORT_ANNOTATION], "node-b")
    assert [i.profile for i in report.gpus[0].instances] == ["1g.5gb"] * 7


def test_deleting_a_node_removes_it_from_the_twin(api: client.ApiClient, server: TwinApiServer) -> None:
    v1 = client.CoreV1Api(api)
    v1.delete_node("node-a")
    assert "node-a" not in server.twin.nodes and [n.metadata.name for n in v1.list_node().items] == ["node-b"]
    assert server.twin.pod("team-a/train-0").deleted_at is not None
    with pytest.raises(ApiException) as err:
        v1.read_node("node-a")
    assert err.value.status == 404 and status_of(err.value)["message"] == 'nodes "node-a" not found'


# ---- pods ------------------------------------------------------------------------------------------------


def test_created_pod_pends_with_the_scheduler_condition(api: client.ApiClient, server: TwinApiServer) -> None:
    v1 = client.CoreV1Api(api)
    created = v1.create_namespaced_pod("default", pod_body("small", {ONE_G: 1}, priority=5))
    assert created.status.phase == "Pending" and created.spec.priority == 5
    condition = created.status.conditions[0]
    assert (condition.type, condition.status, condition.reason) == ("PodScheduled", "False", "Unschedulable")
    assert "Insufficient nvidia.com/mig-1g.5gb" in condition.message
    assert server.twin.pod("default/small").spec.priority == 5
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_pod("default", pod_body("small", {ONE_G: 1}))
    assert err.value.status == 409 and status_of(err.value)["reason"] == "AlreadyExists"


def test_bad_requests_are_rejected(api: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api)
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_pod("default", pod_body("bad", {"nvidia.com/mig-9g.1gb": 1}))
    body = status_of(err.value)
    assert err.value.status == 422 and body["reason"] == "Invalid" and "9g.1gb" in body["message"]
    assert "\n" not in body["message"]
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_pod("nowhere", pod_body("p", {ONE_G: 1}))
    assert err.value.status == 404 and 'namespaces "nowhere" not found' in status_of(err.value)["message"]


def test_pod_that_fits_binds_runs_completes_and_stays(api: client.ApiClient, server: TwinApiServer) -> None:
    v1 = client.CoreV1Api(api)
    body = pod_body(
        "job", {THREE_G: 1}, metadata={"labels": {"app": "job"}, "annotations": {"migopt.io/twin-duration-s": "60"}},
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["b"]}]}]}}},
    )  # fmt: skip
    pod = v1.create_namespaced_pod("default", body)
    assert pod.status.phase == "Running" and pod.spec.node_name == "node-b" and pod.metadata.labels == {"app": "job"}
    report = parse_report(v1.read_node("node-b").metadata.annotations[GPU_REPORT_ANNOTATION], "node-b")
    assert [i.pod for i in report.gpus[0].instances if i.busy] == ["default/job"]
    server.advance(61)
    done = v1.read_namespaced_pod("job", "default")
    assert done.status.phase == "Succeeded" and done.status.container_statuses[0].state.terminated.reason == "Completed"
    v1.delete_namespaced_pod("job", "default")
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod("job", "default")
    assert err.value.status == 404


def test_deleting_a_running_pod_frees_its_device(api: client.ApiClient, server: TwinApiServer) -> None:
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_pod("default", pod_body("bare", {THREE_G: 1}, nodeSelector={"pool": "b"}))
    assert server.twin.pod("default/bare").node == "node-b"
    v1.delete_namespaced_pod("bare", "default")
    assert server.twin.pod("default/bare").deleted_at is not None
    assert server.twin.allocatable("node-b")[THREE_G] == 2 and not server.twin.node("node-b").gpus[0].holders
    assert "default/bare-r1" not in server.twin.pods  # no controller owner: nothing re-creates it


# ---- evictions and budgets -------------------------------------------------------------------------------


def eviction(name: str, namespace: str) -> client.V1Eviction:
    return client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace))


def test_eviction_created_blocked_by_a_budget_and_gone(api: client.ApiClient, server: TwinApiServer) -> None:
    v1, policy = client.CoreV1Api(api), client.PolicyV1Api(api)
    client.CoreV1Api(api).create_namespace({"metadata": {"name": "team-b"}})
    pdb = {"metadata": {"name": "keep-train"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {
        "migopt.io/twin-app": "train"}}}}  # fmt: skip
    policy.create_namespaced_pod_disruption_budget("team-a", pdb)
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_pod_eviction("train-0", "team-a", eviction("train-0", "team-a"))
    body = status_of(err.value)
    assert err.value.status == 429 and body["reason"] == "TooManyRequests"
    assert "keep-train" in body["details"]["causes"][0]["message"]
    assert server.twin.evictions[-1].outcome == "blocked"
    policy.delete_namespaced_pod_disruption_budget("keep-train", "team-a")
    v1.create_namespaced_pod_eviction("train-0", "team-a", eviction("train-0", "team-a"))
    assert server.twin.evictions[-1].outcome == "evicted"
    replacement = v1.read_namespaced_pod("train-0-r1", "team-a")  # its ReplicaSet re-created it
    assert replacement.metadata.labels["migopt.io/twin-lineage"] == "train-0"
    assert replacement.metadata.owner_references[0].kind == "ReplicaSet"
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_pod_eviction("train-0", "team-a", eviction("train-0", "team-a"))
    assert err.value.status == 404


# ---- generic objects, conflicts, the owned ConfigMap -----------------------------------------------------


def test_stale_update_conflicts_and_leases(api: client.ApiClient) -> None:
    v1, coordination = client.CoreV1Api(api), client.CoordinationV1Api(api)
    cm = v1.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {"a": "1"}})
    cm.data = {"a": "2"}
    updated = v1.replace_namespaced_config_map("c", "default", cm)
    assert int(updated.metadata.resource_version) > int(cm.metadata.resource_version)
    with pytest.raises(ApiException) as err:
        v1.replace_namespaced_config_map("c", "default", cm)  # still carries the old resourceVersion
    assert err.value.status == 409 and status_of(err.value)["reason"] == "Conflict"
    body = {"metadata": {"name": "migopt-leader"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}
    lease = coordination.create_namespaced_lease("kube-system", body)
    lease.spec.holder_identity = "b"
    renewed = coordination.replace_namespaced_lease("migopt-leader", "kube-system", lease)
    assert renewed.spec.holder_identity == "b" and renewed.metadata.uid == lease.metadata.uid
    with pytest.raises(ApiException) as err:
        coordination.replace_namespaced_lease("migopt-leader", "kube-system", lease)
    assert err.value.status == 409
    with pytest.raises(ApiException) as err:
        coordination.create_namespaced_lease("kube-system", {"metadata": {"name": "migopt-leader"}})
    assert err.value.status == 409 and status_of(err.value)["reason"] == "AlreadyExists"


def test_mig_config_map_is_bridged_both_ways(api: client.ApiClient, server: TwinApiServer) -> None:
    v1 = client.CoreV1Api(api)
    cm = v1.read_namespaced_config_map("migopt-mig-config", "gpu-operator")
    assert cm.data["config.yaml"] == CONFIG
    extended = CONFIG + '  only-7g:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {"7g.40gb": 1}\n'
    v1.patch_namespaced_config_map("migopt-mig-config", "gpu-operator", {"data": {"config.yaml": extended}})
    assert server.twin.read_mig_config() == extended
    server.twin.write_mig_config(CONFIG)
    server.sync()
    assert v1.read_namespaced_config_map("migopt-mig-config", "gpu-operator").data["config.yaml"] == CONFIG
    v1.delete_namespaced_config_map("migopt-mig-config", "gpu-operator")
    assert server.twin.read_mig_config() is None


# ---- watch -----------------------------------------------------------------------------------------------


def test_watch_from_a_lists_resource_version_sees_changes(api: client.ApiClient, server: TwinApiServer) -> None:
    v1 = client.CoreV1Api(api)
    rv = v1.list_node().metadata.resource_version
    v1.patch_node("node-b", {"spec": {"unschedulable": True}})
    v1.create_namespaced_pod("default", pod_body("watched", {ONE_G: 1}))
    events = []
    stream = watch.Watch()
    for event in stream.stream(v1.list_node, resource_version=rv, timeout_seconds=5):
        events.append((event["type"], event["object"].metadata.name, event["object"].spec.unschedulable))
        stream.stop()
    assert events == [("MODIFIED", "node-b", True)]
    stream = watch.Watch()
    for event in stream.stream(v1.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=5):
        assert (event["type"], event["object"].metadata.name) == ("ADDED", "watched")
        stream.stop()


def test_watch_on_expired_history_gets_410(api: client.ApiClient, server: TwinApiServer) -> None:
    v1 = client.CoreV1Api(api)
    rv = v1.list_node().metadata.resource_version
    server.apply_faults(FaultRequest(expire_history=True))
    with pytest.raises(ApiException) as err:
        for _ in watch.Watch().stream(v1.list_node, resource_version=rv, timeout_seconds=5):
            pass
    assert err.value.status == 410
    with pytest.raises(ApiException) as err:  # without a timeout the client retries once, then gives up
        for _ in watch.Watch().stream(v1.list_node, resource_version=rv):
            pass
    assert err.value.status == 410
    fresh = v1.list_node().metadata.resource_version  # a relist gives a resourceVersion that works again
    v1.patch_node("node-a", {"metadata": {"labels": {"x": "1"}}})
    stream = watch.Watch()
    for event in stream.stream(v1.list_node, resource_version=fresh, timeout_seconds=5):
        assert event["object"].metadata.labels["x"] == "1"
        stream.stop()


def test_bounded_history_expires_old_resource_versions() -> None:
    with TwinApiServer(small_twin(), speed=0, history=4) as server:
        v1 = client.CoreV1Api(kube_client(server.url))
        rv = v1.list_node().metadata.resource_version
        for i in range(10):
            v1.patch_node("node-a", {"metadata": {"labels": {"n": str(i)}}})
        with pytest.raises(ApiException) as err:
            for _ in watch.Watch().stream(v1.list_node, resource_version=rv, timeout_seconds=5):
                pass
        assert err.value.status == 410 and "too old resource version" in str(err.value)


# ---- faults and the state record -------------------------------------------------------------------------


def test_faults_fire_for_their_count_then_stop(api: client.ApiClient, server: TwinApiServer) -> None:
    v1 = client.CoreV1Api(api)
    server.faults.add(FaultRule(verb="list", resource="pods", code=500, count=2))
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            v1.list_pod_for_all_namespaces()
        assert err.value.status == 500 and status_of(err.value)["reason"] == "InternalError"
    assert len(v1.list_pod_for_all_namespaces().items) == 1
    code, armed, _ = http(server, "/migopt-twin/faults", {"rules": [
        {"verb": "patch", "resource": "nodes", "name": "node-a", "code": 403, "user": "x"},
        {"verb": "create", "resource": "pods/eviction", "code": 429, "retry_after_s": 7},
        {"verb": "update", "resource": "leases", "code": 409}]})  # fmt: skip
    assert code == 200 and len(armed["armed"]) == 3
    v1.patch_node("node-b", {"metadata": {"labels": {"ok": "1"}}})  # another name: not matched
    with pytest.raises(ApiException) as err:
        v1.patch_node("node-a", {"metadata": {"labels": {"ok": "1"}}})
    assert err.value.status == 403 and status_of(err.value)["message"] == (
        'nodes "node-a" is forbidden: User "x" cannot patch resource "nodes" in API group "" at the cluster scope'
    )
    v1.patch_node("node-a", {"metadata": {"labels": {"ok": "1"}}})
    code, body, headers = http(server, "/api/v1/namespaces/team-a/pods/train-0/eviction", {"apiVersion": "policy/v1"})
    assert code == 429 and headers["Retry-After"] == "7" and body["reason"] == "TooManyRequests"
    assert server.twin.evictions == []  # the fault answered before the twin was asked
    code, body, _ = http(server, "/migopt-twin/faults", {"rules": [{"verb": "nope"}]})
    assert code == 400 and body["kind"] == "Status"
    http(server, "/migopt-twin/faults", {"clear": True})
    assert server.faults.armed == []


def test_closing_watches_ends_open_streams(server: TwinApiServer) -> None:
    with urllib.request.urlopen(server.url + "/api/v1/nodes?watch=1&timeoutSeconds=60", timeout=10) as stream:
        first = [json.loads(stream.readline()) for _ in range(2)]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in first] == [
            ("ADDED", "node-a"),
            ("ADDED", "node-b"),
        ]
        http(server, "/migopt-twin/faults", {"close_watches": True})
        assert stream.read() == b""  # ends now, long before its 60 s timeout (the read would time out otherwise)


def test_state_record_and_request_counts(api: client.ApiClient, server: TwinApiServer) -> None:
    v1 = client.CoreV1Api(api)
    v1.list_node()
    v1.list_node()
    v1.patch_node("node-b", {"spec": {"unschedulable": True}})
    v1.create_namespaced_pod_eviction("train-0", "team-a", eviction("train-0", "team-a"))
    client.CoreV1Api(api).create_namespaced_event("default", {
        "metadata": {"name": "e1"}, "involvedObject": {"kind": "Node", "name": "node-b"}, "reason": "MigReconfigure",
        "message": "m"})  # fmt: skip
    code, state, _ = http(server, "/migopt-twin/state")
    assert code == 200 and state["requests"]["list"]["nodes"] == 2 and state["requests"]["patch"]["nodes"] == 1
    assert state["requests"]["create"]["pods/eviction"] == 1 and state["cordoned"] == ["node-b"]
    assert state["evictions"][0]["pod"] == "team-a/train-0" and state["evictions"][0]["outcome"] == "evicted"
    assert state["event_reasons"] == ["MigReconfigure"]
    assert {p["name"]: p["deleted"] for p in state["pods"]} == {"team-a/train-0": True, "team-a/train-0-r1": False}
    assert server.requests[("list", "nodes")] == 2


def test_sync_re_renders_only_what_changed(server: TwinApiServer) -> None:
    rv = server.store.rv
    server.advance(10)
    server.sync()
    assert server.store.rv == rv  # nothing changed: no new versions, no watch events
    server.twin.set_unschedulable("node-b", True)
    server.sync()
    assert server.store.rv == rv + 1


def test_bookmarks_and_twin_events(server: TwinApiServer) -> None:
    server.core.bookmark_s = 0.05
    url = server.url + "/api/v1/nodes?watch=true&resourceVersion=1&allowWatchBookmarks=true&timeoutSeconds=30"
    rv = server.store.rv
    with urllib.request.urlopen(url, timeout=10) as stream:
        while (event := json.loads(stream.readline()))["type"] != "BOOKMARK":
            assert event["type"] in ("ADDED", "MODIFIED")
        assert event["object"]["metadata"]["resourceVersion"] == str(rv)
        server.faults.clear()
        http(server, "/migopt-twin/faults", {"close_watches": True})
    server.twin.record_event("Node", "node-a", "MigReconfigured", "done")
    server.sync()
    code, events, _ = http(server, "/api/v1/namespaces/default/events")
    assert code == 200 and [(e["reason"], e["involvedObject"]["name"]) for e in events["items"]] == [
        ("MigReconfigured", "node-a")
    ]


def test_pod_labels_can_change_and_feed_budgets(api: client.ApiClient, server: TwinApiServer) -> None:
    v1 = client.CoreV1Api(api)
    pod = v1.patch_namespaced_pod("train-0", "team-a", {"metadata": {"labels": {"guarded": "yes"}}})
    assert pod.metadata.labels["guarded"] == "yes" and pod.metadata.labels["migopt.io/twin-lineage"] == "train-0"
    assert [p.metadata.name for p in v1.list_pod_for_all_namespaces(label_selector="guarded=yes").items] == ["train-0"]
    pdb = {"metadata": {"name": "g"}, "spec": {"maxUnavailable": 0, "selector": {"matchExpressions": [
        {"key": "guarded", "operator": "Exists"}]}}}  # fmt: skip
    client.PolicyV1Api(api).create_namespaced_pod_disruption_budget("team-a", pdb)
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_pod_eviction("train-0", "team-a", eviction("train-0", "team-a"))
    assert err.value.status == 429
    with pytest.raises(ApiException) as err:
        client.PolicyV1Api(api).create_namespaced_pod_disruption_budget(
            "team-a", {"metadata": {"name": "bad"}, "spec": {"minAvailable": "half"}}
        )
    assert err.value.status == 422
