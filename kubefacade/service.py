"""The verbs on every served resource, independent of HTTP: get, list, create, update, patch, delete, evict.

Kinds the backend owns (the twin's nodes and pods) are read from the store the backend keeps in sync and
written through the backend; everything else (ConfigMaps, Leases, Events, Namespaces, PodDisruptionBudgets,
ResourceClaims, ResourceSlices) is a plain object store, and the backend hears of every write to it. Callers hold
the server lock.
"""

from __future__ import annotations

import copy
import json
import secrets
from typing import Any

from kubefacade.backend import Backend
from kubefacade.errors import ApiError, already_exists, bad_request, conflict, not_found
from kubefacade.objects import PDBS, validate_pdb
from kubefacade.openapi import schemas
from kubefacade.patch import apply_patch
from kubefacade.resources import Resource
from kubefacade.schemas import kind_schema
from kubefacade.selectors import object_matcher
from kubefacade.store import ObjectStore, Stored, dumps


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body or b"{}")
    except (json.JSONDecodeError, RecursionError):  # not JSON, or nested past the parser's recursion limit
        raise bad_request("the request body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise bad_request("the request body must be a JSON object")
    return obj


class ApiService:
    def __init__(self, store: ObjectStore, backend: Backend) -> None:
        self.store = store
        self.backend = backend

    # ---- reads ------------------------------------------------------------------------------------------

    def get(self, res: Resource, namespace: str, name: str) -> Stored:
        stored = self.store.get(res.key, namespace, name)
        if stored is None:
            raise not_found(res.name, name, res.group)
        return stored

    def list(
        self, res: Resource, namespace: str | None, label_selector: str | None, field_selector: str | None
    ) -> tuple[list[Stored], int]:
        matches = object_matcher(label_selector, field_selector, res.key)
        if not label_selector and not field_selector:
            items = list(self.store.items(res.key, namespace))
        else:
            items = [s for s in self.store.items(res.key, namespace) if matches(s.obj)]
        return items, self.store.rv

    # ---- writes -----------------------------------------------------------------------------------------

    def _prepare(self, res: Resource, namespace: str, obj: dict[str, Any], name: str | None) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if name is None and not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{secrets.token_hex(3)[:5]}"
        if not meta.get("name"):
            raise ApiError(
                422, f"{res.kind} is invalid: metadata.name: Required value: name or generateName is required"
            )
        if name is not None and meta["name"] != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        if res.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
            if self.store.get("namespaces", "", namespace) is None:
                raise not_found("namespaces", namespace)
        else:
            meta.pop("namespace", None)
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        return obj

    def create(self, res: Resource, namespace: str, body: bytes, dry_run: bool = False) -> Stored:
        obj = self._prepare(res, namespace, parse_body(body), None)
        name = obj["metadata"]["name"]
        if self.store.get(res.key, namespace, name) is not None:
            raise already_exists(res.name, name, res.group)
        for field in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp"):
            obj["metadata"].pop(field, None)
        if dry_run:
            if res.key == PDBS:
                validate_pdb(obj)
            return Stored(obj, dumps(obj))
        if res.key in self.backend.owned:
            return self.backend.create(res.key, namespace, obj)
        if res.key == PDBS:
            validate_pdb(obj)
        stored = self.store.put(res.key, obj)
        self._after_write(res, namespace, name, stored)
        return stored

    def update(self, res: Resource, namespace: str, name: str, body: bytes, dry_run: bool = False) -> Stored:
        obj = self._prepare(res, namespace, parse_body(body), name)
        current = self.get(res, namespace, name)
        rv = obj["metadata"].get("resourceVersion")
        if rv not in (None, "") and rv != current.obj["metadata"]["resourceVersion"]:
            raise conflict(res.name, name, res.group)
        return self._replace(res, namespace, name, current, obj, dry_run)

    def patch(
        self, res: Resource, namespace: str, name: str, content_type: str, body: bytes, dry_run: bool = False
    ) -> Stored:  # fmt: skip
        current = self.get(res, namespace, name)
        obj = apply_patch(copy.deepcopy(current.obj), content_type, body, kind_schema(schemas(), res.gvk))
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv not in (None, "") and rv != current.obj["metadata"]["resourceVersion"]:
            raise conflict(res.name, name, res.group)
        obj = self._prepare(res, namespace, obj, name)
        return self._replace(res, namespace, name, current, obj, dry_run)

    def _replace(
        self, res: Resource, namespace: str, name: str, current: Stored, obj: dict[str, Any], dry_run: bool
    ) -> Stored:  # fmt: skip
        if dry_run:  # what the write would store, checked as far as the facade checks it, and not written
            if res.key == PDBS:
                validate_pdb(obj)
            for field in ("uid", "creationTimestamp", "resourceVersion"):
                obj["metadata"][field] = current.obj["metadata"][field]
            return Stored(obj, dumps(obj))
        if res.key in self.backend.owned:
            return self.backend.replace(res.key, namespace, name, obj)
        if res.key == PDBS:
            validate_pdb(obj)
        meta = obj["metadata"]
        for field in ("uid", "creationTimestamp"):
            meta[field] = current.obj["metadata"][field]
        meta.pop("resourceVersion", None)
        stored = self.store.put(res.key, obj)
        self._after_write(res, namespace, name, stored)
        return stored

    def delete(self, res: Resource, namespace: str, name: str, dry_run: bool = False) -> Stored:
        if dry_run:
            return self.get(res, namespace, name)
        if res.key in self.backend.owned:
            return self.backend.delete(res.key, namespace, name)
        current = self.get(res, namespace, name)
        self.store.delete(res.key, namespace, name)
        self._after_write(res, namespace, name, None)
        return current

    def evict(self, namespace: str, name: str, body: bytes, dry_run: bool = False) -> None:
        """policy/v1 Eviction; a UID precondition that does not match the pod is a 409, as the API server says."""
        eviction = parse_body(body)
        options = eviction.get("deleteOptions") or {}
        wanted = ((options.get("preconditions") or {}) if isinstance(options, dict) else {}).get("uid")
        current = self.store.get("pods", namespace, name)
        if wanted and current is not None and current.obj["metadata"].get("uid") != wanted:
            actual = current.obj["metadata"].get("uid")
            raise ApiError(
                409,
                f"Operation cannot be fulfilled on Pod {name!r}: Precondition failed: UID in precondition: "
                f"{wanted}, UID in object meta: {actual}",
                reason="Conflict",
            )
        self.backend.evict(namespace, name, dry_run)

    def _after_write(self, res: Resource, namespace: str, name: str, stored: Stored | None) -> None:
        self.backend.stored_changed(res.key, namespace, name, stored.obj if stored else None)
