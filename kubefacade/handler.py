"""The HTTP side: one handler thread per connection, routing to discovery, the OpenAPI documents, the verbs (with
`dryRun=All` and `fieldValidation`), watch streams, and the twin's test endpoints (`/migopt-twin/faults`,
`/migopt-twin/state`, and any POST path in `ApiCore.endpoints`, each routed to the callback its server provides).
Every request is counted by verb and resource; every failure is a Kubernetes `Status`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import ValidationError

from kubefacade.errors import ApiError, bad_request, status_object
from kubefacade.faults import FaultRequest, Faults
from kubefacade.fieldcheck import check_fields
from kubefacade.openapi import (
    PROTOBUF_V2,
    accepts_json,
    schemas,
    v2_document,
    v3_document,
    v3_group_version,
    v3_index,
)
from kubefacade.patch import JSON_PATCH
from kubefacade.resources import SERVER_VERSION, Resource, api_group_list, api_versions, resource_list
from kubefacade.routes import Target, page_not_found, parse_target
from kubefacade.selectors import object_matcher
from kubefacade.service import ApiService
from kubefacade.store import ObjectStore, Stored, WatchEvent, dumps
from kubefacade.tables import table

log = logging.getLogger(__name__)
_HEALTH = frozenset({"/healthz", "/livez", "/readyz"})


@dataclass
class ApiCore:
    """What every handler thread shares; `lock` guards the twin and the store."""

    lock: threading.RLock
    store: ObjectStore
    service: ApiService
    faults: Faults
    state: Callable[[], dict[str, Any]]
    apply_faults: Callable[[FaultRequest], None]
    endpoints: dict[str, Callable[[bytes], dict[str, Any]]] = field(default_factory=dict)
    """More test endpoints: POST path -> callback given the request body, answering the JSON reply (an ApiError
    it raises is the response)."""
    stopping: threading.Event = field(default_factory=threading.Event)
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    bookmark_s: float = 2.0
    default_watch_s: int = 1800


class ApiHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], core: ApiCore) -> None:
        super().__init__(address, ApiHandler)
        self.core = core


def _verb(method: str, target: Target, query: dict[str, str]) -> str:
    if method == "GET":
        if target.name:
            return "get"
        return "watch" if query.get("watch") in ("true", "1") else "list"
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    if method not in verbs:
        raise ApiError(405, f"the server does not allow this method on the requested resource: {method}")
    if target.resource.name.endswith("/eviction"):
        if method != "POST":
            raise ApiError(405, "evictions can only be created")
        return "create"
    if method == "POST" and target.name:
        raise ApiError(405, "the server does not allow this method on the requested resource")
    if method != "POST" and not target.name:
        raise ApiError(405, "collection requests other than list, watch and create are not served by the twin")
    return verbs[method]


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: without this each costs ~40 ms
    server: ApiHttpServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # ---- plumbing ---------------------------------------------------------------------------------------

    @property
    def core(self) -> ApiCore:
        return self.server.core

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(
        self, code: int, body: bytes, headers: dict[str, str] | None = None, warnings: Sequence[str] = ()
    ) -> None:  # fmt: skip
        self.send_response(code)
        extra = headers or {}
        if "Content-Type" not in extra:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if "Cache-Control" not in extra:
            self.send_header("Cache-Control", "no-cache, private")
        for key, value in extra.items():
            self.send_header(key, value)
        for warning in warnings:  # RFC 7234 warn-code 299, as kube-apiserver sends them; kubectl prints each
            self.send_header("Warning", '299 - "' + warning.replace("\\", "\\\\").replace('"', '\\"') + '"')
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, err: ApiError) -> None:
        headers = {"Retry-After": str(err.retry_after_s)} if err.retry_after_s is not None else None
        self._send(err.code, dumps(err.status()), headers)

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        body = self._body()
        try:
            if not self._non_resource(method, url.path, body):
                self._resource(method, url.path, query, body)
        except ApiError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as err:  # a facade bug must still answer as an API server would
            log.exception("twin api: %s %s failed", method, self.path)
            self._send_error(ApiError(500, f"Internal error occurred: {type(err).__name__}: {err}"))

    # ---- non-resource paths -----------------------------------------------------------------------------

    def _non_resource(self, method: str, path: str, body: bytes) -> bool:
        path = path.rstrip("/") or "/"
        if path == "/migopt-twin/faults":
            if method != "POST":
                raise ApiError(405, "POST a FaultRequest")
            try:
                request = FaultRequest.model_validate_json(body or b"{}")
            except ValidationError as err:
                raise bad_request(f"fault request: {err.errors()[0]['msg']}") from None
            self.core.apply_faults(request)
            self._send(200, dumps({"armed": [r.model_dump() for r in self.core.faults.armed]}))
            return True
        endpoint = self.core.endpoints.get(path)
        if endpoint is not None:
            if method != "POST":
                raise ApiError(405, f"POST to {path}")
            self._send(200, dumps(endpoint(body)))
            return True
        if method != "GET":
            if path.startswith(("/api/", "/apis/")):
                return False
            raise page_not_found(path)
        if path == "/migopt-twin/state":
            with self.core.lock:
                state = self.core.state()
            self._send(200, dumps(state))
            return True
        if path == "/openapi" or path.startswith("/openapi/"):
            self._openapi(path)
            return True
        document = self._discovery(path)
        if document is None:
            return False
        self._send(200, dumps(document) if not isinstance(document, bytes) else document)
        return True

    def _discovery(self, path: str) -> dict[str, Any] | bytes | None:
        if path == "/version":
            return SERVER_VERSION
        if path in _HEALTH:
            return b"ok"
        if path == "/api":
            host = self.headers.get("Host") or "127.0.0.1"
            return api_versions(host)
        if path == "/apis":
            return api_group_list()
        parts = [p for p in path.split("/") if p]
        if len(parts) == 2 and parts[0] == "api":
            found = resource_list("", parts[1])
            if found is None:
                raise page_not_found(path)
            return found
        if len(parts) == 2 and parts[0] == "apis":
            listing = api_group_list()
            group = next((g for g in listing["groups"] if g["name"] == parts[1]), None)
            if group is None:
                raise page_not_found(path)
            return {"kind": "APIGroup", "apiVersion": "v1", **group}
        if len(parts) == 3 and parts[0] == "apis":
            found = resource_list(parts[1], parts[2])
            if found is None:
                raise page_not_found(path)
            return found
        if not path.startswith(("/api/", "/apis/")):
            raise page_not_found(path)
        return None

    def _openapi(self, path: str) -> None:
        """The OpenAPI documents (see `kubefacade.openapi`); 404 when no schemas are installed, as before."""
        accept = self.headers.get("Accept") or ""
        if path == "/openapi/v2":
            document = v2_document()
            if document is None:
                raise page_not_found(path)
            if not accepts_json(accept):
                raise ApiError(
                    406, f"only the following media types are accepted: application/json (not {PROTOBUF_V2})",
                    reason="NotAcceptable",
                )  # fmt: skip
            self._send(200, document)
            return
        if path == "/openapi/v3":
            index = v3_index()
            if index is None:
                raise page_not_found(path)
            self._send(200, dumps(index))
            return
        found = v3_group_version(path)
        document = v3_document(*found) if found is not None else None
        if document is None:
            raise page_not_found(path)
        self._send(200, document)

    # ---- resources --------------------------------------------------------------------------------------

    def _resource(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        target = parse_target(path)
        if target is None:
            raise page_not_found(path)
        verb = _verb(method, target, query)
        res, ns, name = target.resource, target.namespace, target.name
        with self.core.lock:
            self.core.requests[(verb, target.label)] += 1
        self.core.faults.check(verb, target.label, res.group, name, ns)
        service = self.core.service
        wants_table = "as=Table" in (self.headers.get("Accept") or "")
        if verb == "watch":
            self._watch(target, query)
            return
        if verb == "list":
            with self.core.lock:
                items, rv = service.list(res, ns or None, query.get("labelSelector"), query.get("fieldSelector"))
                if wants_table:
                    self._send(200, dumps(table(res, items, rv)))
                    return
            self._send(200, _list_body(res.kind, res.api_version, items, rv))
            return
        content_type = self.headers.get("Content-Type") or ""
        dry_run = _dry_run(query.get("dryRun"))
        warnings: list[str] = []
        if verb in ("create", "update", "patch") and not res.name.endswith("/eviction"):
            warnings = _field_warnings(res, content_type if verb == "patch" else "", body, query)
        with self.core.lock:
            if verb == "get":
                stored = service.get(res, ns, name)
                if wants_table:
                    self._send(200, dumps(table(res, [stored], int(stored.obj["metadata"]["resourceVersion"]))))
                    return
                code = 200
            elif verb == "create" and res.name.endswith("/eviction"):
                service.evict(ns, name, body, dry_run)
                self._send(
                    201, dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
                )
                return
            elif verb == "create":
                stored, code = service.create(res, ns, body, dry_run), 201
            elif verb == "update":
                stored, code = service.update(res, ns, name, body, dry_run), 200
            elif verb == "patch":
                stored, code = service.patch(res, ns, name, content_type, body, dry_run), 200
            else:
                stored, code = service.delete(res, ns, name, dry_run), 200
                if res.key not in ("pods", "nodes"):
                    details = {"name": name, "group": res.group, "kind": res.name, "uid": stored.obj["metadata"]["uid"]}
                    self._send(
                        200,
                        dumps(
                            {
                                "kind": "Status",
                                "apiVersion": "v1",
                                "metadata": {},
                                "status": "Success",
                                "details": details,
                            }
                        ),
                    )
                    return
        self._send(code, stored.raw, warnings=warnings)

    # ---- watch ------------------------------------------------------------------------------------------

    def _watch(self, target: Target, query: dict[str, str]) -> None:
        res, namespace = target.resource, target.namespace or None
        matches = object_matcher(query.get("labelSelector"), query.get("fieldSelector"), res.key)
        timeout = float(query.get("timeoutSeconds") or self.core.default_watch_s)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        rv_param = query.get("resourceVersion") or ""
        store = self.core.store
        first: list[bytes] = []
        failure: ApiError | None = None
        with self.core.lock:
            generation = store.closed_generation
            if rv_param in ("", "0"):
                last = store.rv
                first = [_event("ADDED", s.raw) for s in store.items(res.key, namespace) if matches(s.obj)]
            else:
                try:
                    last = int(rv_param)
                except ValueError:
                    raise bad_request(f"invalid resourceVersion {rv_param!r}") from None
                try:
                    first, last = _collect(store.events_after(last, res.key, namespace), matches, last)
                except ApiError as err:
                    failure = err
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        if failure is not None:
            self._chunk(_error_event(failure))
            self._end_stream()
            return
        if first:
            self._chunk(b"".join(first))
        deadline = time.monotonic() + timeout
        idle_since = time.monotonic()
        while True:
            lines: list[bytes] = []
            with self.core.lock:
                while self._quiet(last, generation, deadline, idle_since if bookmarks else None):
                    store.changed.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                if self.core.stopping.is_set() or store.closed_generation != generation or time.monotonic() >= deadline:
                    break
                if store.rv == last:  # idle: a bookmark tells the client how far it has seen
                    bookmark = {
                        "kind": res.kind,
                        "apiVersion": res.api_version,
                        "metadata": {"resourceVersion": str(last)},
                    }
                    lines.append(_event("BOOKMARK", dumps(bookmark)))
                else:
                    try:
                        lines, last = _collect(store.events_after(last, res.key, namespace), matches, store.rv)
                    except ApiError as err:
                        failure = err
                        break
            if lines:
                idle_since = time.monotonic()
                self._chunk(b"".join(lines))
        if failure is not None:
            self._chunk(_error_event(failure))
        self._end_stream()

    def _quiet(self, last: int, generation: int, deadline: float, idle_since: float | None) -> bool:
        """Nothing to send yet: no change, not stopping or closed, before the deadline and the next bookmark."""
        store, now = self.core.store, time.monotonic()
        due = idle_since is not None and now - idle_since >= self.core.bookmark_s
        open_ = not self.core.stopping.is_set() and store.closed_generation == generation
        return store.rv == last and open_ and now < deadline and not due

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True


def _dry_run(value: str | None) -> bool:
    if value in (None, ""):
        return False
    if value != "All":
        raise bad_request(f"unsupported dryRun value {value!r}: the only supported value is All")
    return True


def _field_warnings(res: Resource, patch_type: str, body: bytes, query: dict[str, str]) -> list[str]:
    """Unknown fields in a write's body, by the request's `fieldValidation` (a JSON patch's operations are not
    an object, so they are not checked)."""
    if patch_type.split(";")[0].strip() == JSON_PATCH:
        return []
    try:
        obj = json.loads(body or b"{}")
    except (json.JSONDecodeError, RecursionError):  # not JSON, or nested past the parser's recursion limit
        return []  # the verb itself answers a malformed body
    return check_fields(schemas(), res.gvk, obj, query.get("fieldValidation"))


def _event(kind: str, raw: bytes) -> bytes:
    return b'{"type":"' + kind.encode() + b'","object":' + raw + b"}\n"


def _error_event(err: ApiError) -> bytes:
    return _event("ERROR", dumps(status_object(err.code, err.reason, err.message)))


def _collect(events: list[WatchEvent], matches: Callable[[dict[str, Any]], bool], last: int) -> tuple[list[bytes], int]:
    lines = [_event(e.type, e.stored.raw) for e in events if matches(e.stored.obj)]
    return lines, max([last, *(e.rv for e in events)])


def _list_body(kind: str, api_version: str, items: list[Stored], rv: int) -> bytes:
    head = json.dumps({"kind": f"{kind}List", "apiVersion": api_version, "metadata": {"resourceVersion": str(rv)}})
    return head[:-1].encode() + b',"items":[' + b",".join(s.raw for s in items) + b"]}"
