"""`/openapi/v2`, `/openapi/v3` and `/openapi/v3/<api path>`: what kubectl reads before it writes or explains.

kubectl 1.32 asks OpenAPI v3 first. `kubectl create -f` and `kubectl apply -f` validate strictly by default: when
the v3 document lists the `fieldValidation` query parameter on the kind's PATCH operation, kubectl leaves the
checking to the server and sends `fieldValidation=Strict`; otherwise it falls back to OpenAPI v2, which client-go
asks for only as protobuf (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`), which the facade does
not speak (it answers 406, as kube-apiserver does to a media type it cannot produce; JSON is served to anyone who
accepts it). `kubectl apply` computes its strategic merge patch from the v3 schemas' `x-kubernetes-patch-*`
extensions; `kubectl explain` walks the v3 document from the operation that names the group/version/kind.
Each document describes exactly the resources the facade serves (`RESOURCES`), with the paths and verbs it
answers.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from kubefacade.resources import RESOURCES, SERVER_VERSION, Resource
from kubefacade.schemas import V2_REF, V3_REF, Schemas, load_schemas

PROTOBUF_V2 = "application/com.github.proto-openapi.spec.v2"
PATCH_TYPES = (
    "application/json-patch+json", "application/merge-patch+json", "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
)  # fmt: skip
_WRITE_QUERY = {
    "dryRun": "When present, indicates that modifications should not be persisted (All).",
    "fieldManager": "A name associated with the actor or entity that is making these changes.",
    "fieldValidation": "How the server treats unknown fields in the request: Ignore, Warn (default) or Strict.",
}
_LIST_QUERY = {
    "labelSelector": "A selector to restrict the list of returned objects by their labels.",
    "fieldSelector": "A selector to restrict the list of returned objects by their fields.",
    "resourceVersion": "The resource version to start a watch from.",
    "timeoutSeconds": "Timeout for the list/watch call.",
    "watch": "Watch for changes to the described resources.",
    "allowWatchBookmarks": "Requests watch events with type BOOKMARK.",
}


def served_kinds() -> tuple[tuple[str, str, str], ...]:
    return tuple(sorted({r.gvk for r in RESOURCES}))


def schemas() -> Schemas | None:
    return load_schemas(int(SERVER_VERSION["major"]), int(SERVER_VERSION["minor"]), served_kinds())


def api_path(group: str, version: str) -> str:
    """How `/openapi/v3` names a group version: `api/v1`, `apis/policy/v1`."""
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in text.replace(".", "-").replace("/", "-").split("-"))


def _parameter(name: str, where: str, description: str, v3: bool, kind: str = "string") -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": where, "description": description}
    if where == "path":
        param["required"] = True
    if v3:
        param["schema"] = {"type": kind, "uniqueItems": True}
    else:
        param["type"] = kind
        param["uniqueItems"] = True
    return param


def _body(ref: str, v3: bool, content_types: tuple[str, ...] = ("application/json",)) -> dict[str, Any]:
    if v3:
        return {"content": {t: {"schema": {"$ref": ref}} for t in content_types}, "required": True}
    return {"name": "body", "in": "body", "required": True, "schema": {"$ref": ref}}


def _response(ref: str | None, v3: bool) -> dict[str, Any]:
    if ref is None:
        return {"200": {"description": "OK"}}
    if v3:
        return {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": ref}}}}}
    return {"200": {"description": "OK", "schema": {"$ref": ref}}}


class _Builder:
    """The paths of one group version, in one dialect."""

    def __init__(self, found: Schemas, v3: bool) -> None:
        self.schemas = found
        self.v3 = v3
        self.prefix = V3_REF if v3 else V2_REF

    def ref(self, group: str, version: str, kind: str) -> str | None:
        name = self.schemas.kind(group, version, kind)
        return self.prefix + name if name else None

    def meta_ref(self, kind: str) -> str:
        name = next((n for n in self.schemas.v3 if n.endswith(f".meta.v1.{kind}")), kind)
        return self.prefix + name

    def operation(
        self, res: Resource, action: str, verb: str, gvk: tuple[str, str, str], query: dict[str, str],
        body: str | None = None, response: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        scope = "Namespaced" if res.namespaced else ""
        op_id = f"{verb}{_camel(res.group or 'core')}{_camel(res.version)}{scope}{_camel(res.name)}"
        operation: dict[str, Any] = {
            "description": f"{action} {res.kind}",
            "operationId": op_id,
            "tags": [f"{res.group or 'core'}_{res.version}"],
            "parameters": [_parameter(n, "query", d, self.v3) for n, d in query.items()],
            "responses": _response(response, self.v3),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": {"group": gvk[0], "kind": gvk[2], "version": gvk[1]},
        }
        if body is not None:
            content = PATCH_TYPES if action == "patch" else ("application/json",)
            if self.v3:
                operation["requestBody"] = _body(body, True, content)
            else:
                operation["parameters"].append(_body(body, False))
                operation["consumes"] = list(content)
        if not self.v3:
            operation["produces"] = ["application/json"]
        return operation

    def paths(self, res: Resource) -> dict[str, dict[str, Any]]:
        base = f"/api/{res.version}" if not res.group else f"/apis/{res.group}/{res.version}"
        scoped = f"{base}/namespaces/{{namespace}}" if res.namespaced else base
        plural, _, sub = res.name.partition("/")
        path_params = [_parameter("name", "path", f"name of the {res.kind}", self.v3)]
        if res.namespaced:
            path_params.append(_parameter("namespace", "path", "object name and auth scope", self.v3))
        gvk = res.gvk
        if sub:  # pods/eviction: a policy/v1 Eviction posted to a core path
            ref = self.ref(*gvk)
            post = self.operation(res, "post", "create", gvk, _WRITE_QUERY, ref, self.meta_ref("Status"))
            return {f"{scoped}/{plural}/{{name}}/{sub}": {"post": post, "parameters": path_params}}
        one, many = self.ref(*gvk), self.ref(res.group, res.version, f"{res.kind}List")
        collection: dict[str, Any] = {
            "get": self.operation(res, "list", "list", gvk, _LIST_QUERY, response=many),
            "post": self.operation(res, "post", "create", gvk, _WRITE_QUERY, one, one),
        }
        if res.namespaced:
            collection["parameters"] = path_params[1:]
        item: dict[str, Any] = {
            "get": self.operation(res, "get", "read", gvk, {}, response=one),
            "put": self.operation(res, "put", "replace", gvk, _WRITE_QUERY, one, one),
            "patch": self.operation(res, "patch", "patch", gvk, _WRITE_QUERY, self.meta_ref("Patch"), one),
            "delete": self.operation(res, "delete", "delete", gvk, {"dryRun": _WRITE_QUERY["dryRun"]},
                                     self.meta_ref("DeleteOptions"), self.meta_ref("Status")),
            "parameters": path_params,
        }  # fmt: skip
        found = {f"{scoped}/{plural}": collection, f"{scoped}/{plural}/{{name}}": item}
        if res.namespaced:
            found[f"{base}/{plural}"] = {"get": self.operation(res, "list", "list", gvk, _LIST_QUERY, response=many)}
        return found


def _info() -> dict[str, str]:
    return {"title": "Kubernetes (migopt twin facade)", "version": str(SERVER_VERSION["gitVersion"])}


@functools.cache
def v3_document(group: str, version: str) -> bytes | None:
    """The OpenAPI v3 document of one group version, or None when it is not served (or no schemas are)."""
    found = schemas()
    served = [r for r in RESOURCES if r.group == group and r.version == version]
    if found is None or not served:
        return None
    builder = _Builder(found, v3=True)
    paths: dict[str, Any] = {}
    for res in served:
        paths.update(builder.paths(res))
    document = {
        "openapi": "3.0.0", "info": _info(), "paths": paths,
        "components": {"schemas": found.v3, "securitySchemes": {"BearerToken": {
            "type": "apiKey", "name": "authorization", "in": "header",
            "description": "Bearer Token authentication"}}},
    }  # fmt: skip
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def v3_hash(group: str, version: str) -> str | None:
    document = v3_document(group, version)
    return hashlib.sha512(document).hexdigest().upper() if document is not None else None


def v3_index() -> dict[str, Any] | None:
    """`/openapi/v3`: each served group version and the URL of its document (its hash in the query)."""
    if schemas() is None:
        return None
    paths = {}
    for group, version in dict.fromkeys((r.group, r.version) for r in RESOURCES):
        path = api_path(group, version)
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={v3_hash(group, version)}"}
    return {"paths": paths}


def v3_group_version(path: str) -> tuple[str, str] | None:
    """`/openapi/v3/api/v1` → ("", "v1"); `/openapi/v3/apis/policy/v1` → ("policy", "v1")."""
    parts = [p for p in path.removeprefix("/openapi/v3").split("/") if p]
    found = None
    if len(parts) == 2 and parts[0] == "api":
        found = "", parts[1]
    if len(parts) == 3 and parts[0] == "apis":
        found = parts[1], parts[2]
    served = {(r.group, r.version) for r in RESOURCES}
    return found if found in served else None  # only served pairs reach the cached builder: its cache stays bounded


@functools.cache
def v2_document() -> bytes | None:
    """The whole API as one Swagger 2.0 document (JSON), or None when no schemas are available."""
    found = schemas()
    if found is None:
        return None
    builder = _Builder(found, v3=False)
    paths: dict[str, Any] = {}
    for res in RESOURCES:
        paths.update(builder.paths(res))
    document = {
        "swagger": "2.0", "info": _info(), "paths": paths, "definitions": found.v2,
        "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}},
        "security": [{"BearerToken": []}],
    }  # fmt: skip
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def accepts_json(accept: str) -> bool:
    """Whether an Accept header admits JSON (no header, `*/*` and `application/*` do)."""
    if not accept.strip():
        return True
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return any(t in ("application/json", "*/*", "application/*", "") for t in types)
