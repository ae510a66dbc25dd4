"""The facade's OpenAPI documents, server-side field validation, dry runs, and strategic merge patch."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kubefacade.openapi as kubefacade_openapi
import kubefacade.schemas as kubefacade_schemas
from kubefacade.openapi import schemas
from kubefacade.patch import merge
from kubefacade.schemas import FieldSchema, kind_schema, pick_release
from kubefacade.strategic import strategic_merge
from simulations.twin.api import TwinApiServer
from tests.twin_api_fixtures import ONE_G, small_twin

PROTOBUF = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"


@pytest.fixture
def server() -> Iterator[TwinApiServer]:
    with TwinApiServer(small_twin(), speed=0) as running:
        yield running


def call(
    server: TwinApiServer, path: str, body: Any = None, method: str | None = None,
    content_type: str = "application/json", accept: str = "application/json",
) -> tuple[int, Any, Any]:  # fmt: skip
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.url + path, data=data, method=method or ("POST" if data else "GET"))
    request.add_header("Content-Type", content_type)
    request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def pod_body(name: str, **container: Any) -> dict[str, Any]:
    main = {"name": "main", "image": "x", "resources": {"limits": {ONE_G: "1"}}} | container
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [main]}}


def the_schemas() -> Any:
    found = schemas()
    assert found is not None, "kubernetes-validate is a test dependency"
    return found


# ---- the documents ----------------------------------------------------------------------------------------


def test_v3_index_and_documents_describe_what_is_served(server: TwinApiServer) -> None:
    code, index, _ = call(server, "/openapi/v3")
    assert code == 200
    assert set(index["paths"]) == {
        "api/v1", "apis/policy/v1", "apis/coordination.k8s.io/v1", "apis/events.k8s.io/v1", "apis/resource.k8s.io/v1"
    }  # fmt: skip
    url = index["paths"]["api/v1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/api/v1?hash=")
    code, core, _ = call(server, url)
    assert code == 200 and core["openapi"].startswith("3.")
    patch = core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "", "kind": "Pod", "version": "v1"}
    assert "fieldValidation" in {p["name"] for p in patch["parameters"] if p["in"] == "query"}
    assert "application/strategic-merge-patch+json" in patch["requestBody"]["content"]
    eviction = core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}/eviction"]["post"]
    assert eviction["x-kubernetes-group-version-kind"] == {"group": "policy", "kind": "Eviction", "version": "v1"}
    assert "/api/v1/namespaces/{namespace}/widgets" not in core["paths"]
    pod_schema = core["components"]["schemas"]["io.k8s.api.core.v1.Pod"]
    assert pod_schema["properties"]["spec"]["allOf"] == [{"$ref": "#/components/schemas/io.k8s.api.core.v1.PodSpec"}]
    containers = core["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name" and containers["type"] == "array"
    code, _, _ = call(server, "/openapi/v3/apis/apps/v1")
    assert code == 404


def test_v2_is_json_for_json_clients_and_refused_to_protobuf_only_ones(server: TwinApiServer) -> None:
    code, document, headers = call(server, "/openapi/v2")
    assert code == 200 and headers["Content-Type"] == "application/json" and document["swagger"] == "2.0"
    policy = document["paths"]["/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/{name}"]["patch"]
    assert policy["x-kubernetes-group-version-kind"]["kind"] == "PodDisruptionBudget"
    assert document["definitions"]["io.k8s.api.core.v1.Pod"]["properties"]["spec"]["$ref"] == (
        "#/definitions/io.k8s.api.core.v1.PodSpec"
    )
    code, status, _ = call(server, "/openapi/v2", accept=PROTOBUF)
    assert code == 406 and status["reason"] == "NotAcceptable"
    code, _, _ = call(server, "/openapi/v2", accept=f"{PROTOBUF}, application/json")
    assert code == 200


def test_the_schema_release_is_the_claimed_one_or_the_newest() -> None:
    shipped = ["v1.30.0-local", "v1.32.0-local", "v1.32.0-local-strict", "v1.33.0-local", "README"]
    assert pick_release(shipped, 1, 32) == "v1.32.0-local"
    assert pick_release(shipped, 1, 40) == "v1.33.0-local"
    assert pick_release(["README"], 1, 32) is None
    assert the_schemas().release == "v1.32.0-local"
    # resource.k8s.io/v1 is GA from 1.34: described by the nearest release that has it, the rest stays 1.32's
    for kind in ("ResourceClaim", "ResourceSliceList"):
        assert the_schemas().kind("resource.k8s.io", "v1", kind) == f"io.k8s.api.resource.v1.{kind}"


# ---- field validation and dry runs ------------------------------------------------------------------------


def test_unknown_fields_are_refused_warned_or_ignored(server: TwinApiServer) -> None:
    typo = pod_body("a", imagePullPolicyy="Always")
    path = "/api/v1/namespaces/default/pods"
    code, status, _ = call(server, path + "?fieldValidation=Strict", typo)
    assert code == 400 and status["message"] == (
        'Pod in version "v1" cannot be handled as a Pod: strict decoding error: '
        'unknown field "spec.containers[0].imagePullPolicyy"'
    )
    code, _, headers = call(server, path, typo)  # Warn is the server's default
    warning = '299 - "unknown field \\"spec.containers[0].imagePullPolicyy\\""'
    assert code == 201 and headers.get_all("Warning") == [warning]
    code, _, headers = call(server, path + "?fieldValidation=Ignore", pod_body("b", bogus=1))
    assert code == 201 and headers.get_all("Warning") is None
    code, status, _ = call(server, path + "?fieldValidation=Loose", pod_body("c"))
    assert code == 400 and "fieldValidation must be one of" in status["message"]
    order = {"$setElementOrder/containers": [{"name": "main"}]}
    patch = {"metadata": {"labels": {"x": "1"}, "labelz": {}}, "spec": order}
    code, status, _ = call(server, path + "/a?fieldValidation=Strict", patch, "PATCH",
                           "application/strategic-merge-patch+json")  # fmt: skip
    assert code == 400 and 'unknown field "metadata.labelz"' in status["message"]  # the directive is no field


def test_dry_runs_answer_without_writing(server: TwinApiServer) -> None:
    rv = server.store.rv
    code, created, _ = call(server, "/api/v1/namespaces/default/configmaps?dryRun=All",
                            {"metadata": {"name": "c"}, "data": {"k": "v"}})  # fmt: skip
    assert code == 201 and created["data"] == {"k": "v"}
    code, _, _ = call(server, "/api/v1/namespaces/team-a/pods/train-0?dryRun=All", {"metadata": {"labels": {"x": "1"}}},
                      "PATCH", "application/merge-patch+json")  # fmt: skip
    assert code == 200
    code, _, _ = call(server, "/api/v1/namespaces/team-a/pods/train-0?dryRun=All", method="DELETE")
    assert code == 200
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "train-0", "namespace": "team-a"}}
    code, _, _ = call(server, "/api/v1/namespaces/team-a/pods/train-0/eviction?dryRun=All", eviction)
    assert code == 201
    assert server.store.rv == rv and server.twin.evictions == [] and server.twin.pod("team-a/train-0").active
    budget = {"metadata": {"name": "b"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {
        "migopt.io/twin-app": "train"}}}}  # fmt: skip
    assert call(server, "/apis/policy/v1/namespaces/team-a/poddisruptionbudgets", budget)[0] == 201
    code, status, _ = call(server, "/api/v1/namespaces/team-a/pods/train-0/eviction?dryRun=All", eviction)
    assert code == 429 and status["details"]["causes"][0]["reason"] == "DisruptionBudget"
    assert server.twin.evictions == []
    code, status, _ = call(server, "/api/v1/namespaces/default/configmaps?dryRun=Some", {"metadata": {"name": "c"}})
    assert code == 400 and "dryRun" in status["message"]


def test_a_pod_takes_the_spec_changes_kubernetes_allows_and_refuses_others(server: TwinApiServer) -> None:
    assert call(server, "/api/v1/namespaces/default/pods", pod_body("p"))[0] == 201
    smp = "application/strategic-merge-patch+json"
    image = {"spec": {"containers": [{"name": "main", "image": "y"}]}}
    code, patched, _ = call(server, "/api/v1/namespaces/default/pods/p", image, "PATCH", smp)
    assert code == 200 and patched["spec"]["containers"][0] == {
        "name": "main", "image": "y", "resources": {"limits": {ONE_G: "1"}}
    }
    more = {"spec": {"containers": [{"name": "main", "resources": {"limits": {ONE_G: "2"}}}]}}
    code, status, _ = call(server, "/api/v1/namespaces/default/pods/p", more, "PATCH", smp)
    assert code == 422 and status["details"]["causes"][0]["reason"] == "FieldValueForbidden"
    assert status["details"]["causes"][0]["field"] == "spec"
    assert server.twin.pod("default/p").spec.requests == {ONE_G: 1}


# ---- strategic merge patch --------------------------------------------------------------------------------


def pod_schema() -> FieldSchema:
    found = kind_schema(the_schemas(), ("", "v1", "Pod"))
    assert found is not None
    return found


def test_lists_merge_by_their_keys_with_the_directives_kubectl_sends() -> None:
    live = {
        "metadata": {"finalizers": ["a", "b"], "ownerReferences": [{"uid": "1", "name": "x"}], "labels": {"k": "v"}},
        "spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}],
                 "tolerations": [{"key": "t"}]},
    }  # fmt: skip
    patch = {
        "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["c"],
                     "ownerReferences": [{"uid": "2", "name": "y"}], "labels": {"k": None}},
        "spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "b"}],
                 "containers": [{"name": "b", "image": "3"}, {"name": "c", "image": "4"},
                                {"name": "a", "$patch": "delete"}],
                 "tolerations": [{"key": "u"}]},
    }  # fmt: skip
    result = strategic_merge(live, patch, pod_schema())
    owners = [{"uid": "1", "name": "x"}, {"uid": "2", "name": "y"}]
    assert result["metadata"] == {"finalizers": ["b", "c"], "labels": {}, "ownerReferences": owners}
    assert result["spec"]["containers"] == [{"name": "c", "image": "4"}, {"name": "b", "image": "3"}]
    assert result["spec"]["tolerations"] == [{"key": "u"}]  # no merge strategy: replaced
    assert live["spec"]["containers"][0] == {"name": "a", "image": "1"}  # the original is untouched
    replaced = strategic_merge(live, {"spec": {"containers": [{"name": "z"}, {"$patch": "replace"}]}}, pod_schema())
    assert replaced["spec"]["containers"] == [{"name": "z"}]
    kept = strategic_merge(live, {"spec": {"$retainKeys": ["containers"], "containers": []}}, pod_schema())
    assert set(kept["spec"]) == {"containers"}
    assert strategic_merge(live, {"metadata": {"$patch": "replace", "name": "n"}}, pod_schema())["metadata"] == {
        "name": "n"
    }
    assert strategic_merge(live, {"spec": {"containers": [{"name": "a"}]}}, None)["spec"]["containers"] == [
        {"name": "a"}
    ]  # without a schema every list is replaced


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=3))
_maps = st.recursive(
    st.dictionaries(st.sampled_from(["a", "b", "labels", "data"]), _scalars, max_size=3),
    lambda inner: st.dictionaries(st.sampled_from(["a", "b", "labels", "data", "spec"]), inner, max_size=3),
    max_leaves=12,
)


@given(_maps, _maps)
def test_without_lists_or_directives_a_strategic_merge_is_a_merge_patch(
    doc: dict[str, Any], patch: dict[str, Any]
) -> None:  # fmt: skip
    assert strategic_merge(doc, patch, pod_schema()) == merge(doc, patch)


@pytest.fixture
def no_schemas(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As if `kubernetes-validate` were not installed (the documents are cached: cleared before and after)."""
    caches = (kubefacade_schemas.load_schemas, kubefacade_openapi.v2_document, kubefacade_openapi.v3_document)
    for cached in caches:
        cached.cache_clear()
    monkeypatch.setattr(kubefacade_schemas, "_schema_root", lambda: None)
    yield
    monkeypatch.undo()
    for cached in caches:
        cached.cache_clear()


def test_without_the_schema_package_the_facade_serves_no_openapi_and_checks_nothing(
    no_schemas: None, server: TwinApiServer
) -> None:  # fmt: skip
    for path in ("/openapi/v2", "/openapi/v3", "/openapi/v3/api/v1"):
        code, status, _ = call(server, path)
        assert code == 404 and status["reason"] == "NotFound", path
    code, _, _ = call(server, "/api/v1/namespaces/default/pods?fieldValidation=Strict", pod_body("a", bogus=1))
    assert code == 201
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "1"}
    body = {"metadata": {"name": "c", "ownerReferences": [owner]}, "data": {}}
    assert call(server, "/api/v1/namespaces/default/configmaps", body)[0] == 201
    patch = {"metadata": {"ownerReferences": [owner | {"uid": "2"}]}}
    code, patched, _ = call(server, "/api/v1/namespaces/default/configmaps/c", patch, "PATCH",
                            "application/strategic-merge-patch+json")  # fmt: skip
    assert code == 200 and [o["uid"] for o in patched["metadata"]["ownerReferences"]] == ["2"]  # replaced, not merged


def test_malformed_bodies_and_stored_objects_are_4xx_or_invalid_cells_never_500(server: TwinApiServer) -> None:
    """A pod update whose spec or tolerations have the wrong JSON type is refused with 422; an event stored with
    a non-numeric count still lists as a Table (that cell `<invalid>`); an unserved OpenAPI group is 404; a body
    nested past the JSON parser's recursion limit is 400."""
    pods = "/api/v1/namespaces/default/pods"
    code, created, _ = call(server, pods, pod_body("typed"))
    assert code == 201
    for spec in ("x", [1], {"tolerations": {"a": 1}, "containers": created["spec"]["containers"]}):
        code, answer, _ = call(server, f"{pods}/typed", {**created, "spec": spec}, method="PUT")
        assert code == 422, (spec, answer)
    event = {"metadata": {"name": "odd"}, "involvedObject": "pod", "count": "x", "firstTimestamp": "yesterday",
             "reason": "R", "message": "m", "type": "Normal"}  # fmt: skip
    assert call(server, "/api/v1/namespaces/default/events", event)[0] == 201
    table = "application/json;as=Table;v=v1;g=meta.k8s.io"
    code, listed, _ = call(server, "/api/v1/namespaces/default/events", accept=table)
    assert code == 200 and "<invalid>" in [c for row in listed["rows"] for c in row["cells"]]
    assert call(server, "/openapi/v3/apis/nope.example.com/v9")[0] == 404
    deep = "[" * 100_000 + "]" * 100_000
    request = urllib.request.Request(server.url + pods, data=deep.encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
