"""Calls to the Kubernetes API with the failure policy every write needs, in one place.

- 429 (API priority and fairness) and 5xx back off (honouring `Retry-After`) and retry, a bounded number of times;
- 409 on an idempotent write (a merge patch without resourceVersion, an eviction) is retried like a 429;
  on a versioned update it is returned to the caller, which re-reads and retries (only it knows what to re-read);
- 403 is an RBAC denial: reported once per verb and resource, naming both, and raised as `Forbidden`;
- connection errors (`Unreachable`) are retried like a 503.

Every request is counted by verb and resource (the benchmark's "API requests per reconcile", and a metric).

This is the only module that imports `kubernetes`: `KubeApi` wraps the few generated calls migopt makes (plain
JSON in and out) and `kube_error` turns the library's `ApiException` and urllib3's connection errors into the typed
errors of `optimizer.kube.errors`, so every other module catches those instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from optimizer.kube.errors import (
    Conflict,
    Forbidden,
    KubeApiError,
    NotFound,
    ServerError,
    TooManyRequests,
    Unreachable,
    api_error,
    parse_retry_after,
)
from solver.errors import MigoptError

log = logging.getLogger(__name__)
T = TypeVar("T")
# (connect, read) seconds for every call but watches: a half-open connection must fail, not hang the loop.
REQUEST_TIMEOUT = (10.0, 60.0)
DEFAULT_KUBECONFIG = Path("~/.kube/config")
MERGE_PATCH = "application/merge-patch+json"
# The generated client's connection object, for signatures outside this module (which never look inside it).
ApiClient: TypeAlias = client.ApiClient
# What a request can fail with before `kube_error` types it.
TRANSPORT_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


def make_api_client(kubeconfig: str | None = None, context: str | None = None) -> ApiClient:
    """The client configuration kubectl would use: `--kubeconfig`, else `$KUBECONFIG` (a colon-separated list
    is merged), else the pod's in-cluster service account when running in one, else `~/.kube/config`."""
    configuration = client.Configuration()
    source = kubeconfig or os.environ.get("KUBECONFIG") or None
    in_cluster = source is None and "KUBERNETES_SERVICE_HOST" in os.environ
    if source is None and not in_cluster and DEFAULT_KUBECONFIG.expanduser().is_file():
        source = str(DEFAULT_KUBECONFIG.expanduser())
    if source is None and not in_cluster:
        raise MigoptError("no cluster to talk to: pass --kubeconfig or set KUBECONFIG (not running in a cluster)")
    if in_cluster and context is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as err:
            raise MigoptError(f"cannot use the in-cluster configuration: {err}") from None
    else:
        try:
            config.load_kube_config(config_file=source, context=context, client_configuration=configuration)
        except (config.ConfigException, OSError, TypeError, ValueError) as err:
            raise MigoptError(f"cannot load kubeconfig {source or '(default)'}: {err}") from None
    configuration.retries = False  # the policy below retries, with backoff; urllib3 must not retry on its own
    return client.ApiClient(configuration)


# ---- errors: the one place a `kubernetes` or urllib3 failure becomes a typed error -------------------------


def status_message(err: ApiException) -> tuple[str, str]:
    """(reason, message) of a Kubernetes `Status` body, or of the HTTP response when there is none."""
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    return str(body.get("reason") or err.reason or ""), str(body.get("message") or err.reason or "").strip()


def kube_error(err: BaseException, verb: str, resource: str) -> KubeApiError:
    """The typed error for a failed request: an HTTP answer by its status, no answer at all as `Unreachable`."""
    if isinstance(err, KubeApiError):
        return err
    if isinstance(err, ApiException):
        reason, detail = status_message(err)
        status = int(err.status or 0)
        if not status:  # raised by the client itself, before or without a response: not worth a retry
            return KubeApiError(f"{verb} {resource}: {detail}", status=0, verb=verb, resource=resource, detail=detail)
        headers = err.headers or {}
        retry = parse_retry_after(headers.get("Retry-After"))
        return api_error(status, verb=verb, resource=resource, reason=reason, detail=detail, retry_after=retry)
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return Unreachable(f"{verb} {resource}: {detail}", status=0, verb=verb, resource=resource, detail=detail)


def watch_error(resource: str, event: dict[str, Any]) -> KubeApiError:
    """The typed error a watch's ERROR event carries (its object is a `Status`; 410 means expired: relist)."""
    status = event.get("object") or {}
    return api_error(
        int(status.get("code") or 500),
        verb="watch",
        resource=resource,
        reason=str(status.get("reason", "")),
        detail=str(status.get("message", "")),
    )


def _request(verb: str, resource: str, call: Callable[[], T]) -> T:
    """Run one generated-client call (reading its body included), so nothing untyped escapes this module."""
    try:
        return call()
    except TRANSPORT_ERRORS as err:
        raise kube_error(err, verb, resource) from None


def raw_json(response: Any) -> Any:
    """The body of a `_preload_content=False` response: plain dicts are much cheaper than client models."""
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


# ---- the requests ------------------------------------------------------------------------------------------


class WatchStream:
    """One watch's events as JSON dicts (ERROR events included: see `watch_error`), until the server ends it;
    `close` ends it at once from another thread. Use it as a context manager to release the connection."""

    def __init__(self, resource: str, response: Any) -> None:
        self.resource = resource
        self._response = response

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for line in iter_resp_lines(self._response):
                if line.strip():
                    event: dict[str, Any] = json.loads(line)
                    yield event
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise kube_error(err, "watch", self.resource) from None

    def close(self) -> None:
        """Shutting the socket down wakes the thread blocked reading it (closing alone may not)."""
        with contextlib.suppress(Exception):  # a socket another thread reads may fail any way it likes
            sock = getattr(getattr(self._response, "connection", None), "sock", None)
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
            self._response.close()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._response.release_conn()


class Collection:
    """List and watch one collection (what an informer needs), as plain JSON, raising typed errors."""

    def __init__(self, resource: str, list_call: Callable[..., Any]) -> None:
        self.resource = resource
        self._list_call = list_call

    def list(self) -> dict[str, Any]:
        body: dict[str, Any] = _request(
            "list",
            self.resource,
            lambda: raw_json(self._list_call(_preload_content=False, _request_timeout=REQUEST_TIMEOUT)),
        )
        return body

    def watch(self, resource_version: str | None, timeout_s: int) -> WatchStream:
        """Watch from `resource_version` (with bookmarks) for `timeout_s`, after which the server ends it."""
        response = _request(
            "watch",
            self.resource,
            lambda: self._list_call(
                watch=True,
                resource_version=resource_version,
                timeout_seconds=timeout_s,
                allow_watch_bookmarks=True,
                _preload_content=False,
                # the server ends the watch after timeout_seconds; a read silent for longer means a dead connection
                _request_timeout=(REQUEST_TIMEOUT[0], timeout_s + 30),
            ),
        )
        return WatchStream(self.resource, response)


class KubeApi:
    """The requests migopt makes, on the generated client: plain JSON in and out, every failure a typed error.
    One request each, no retries: run them under an `ApiCaller` for the failure policy."""

    def __init__(self, api_client: ApiClient) -> None:
        self.api_client = api_client
        self._core = client.CoreV1Api(api_client)
        self._policy = client.PolicyV1Api(api_client)
        self._coordination = client.CoordinationV1Api(api_client)
        self._resource = client.ResourceV1Api(api_client)

    @classmethod
    def of(cls, api: KubeApi | ApiClient) -> KubeApi:
        """Accept either an API object or the generated client's connection (tests and tools build those)."""
        return api if isinstance(api, KubeApi) else cls(api)

    # ---- collections (informers) ----

    def nodes(self) -> Collection:
        return Collection("nodes", self._core.list_node)

    def pods(self) -> Collection:
        return Collection("pods", self._core.list_pod_for_all_namespaces)

    def pod_disruption_budgets(self) -> Collection:
        return Collection("poddisruptionbudgets", self._policy.list_pod_disruption_budget_for_all_namespaces)

    def resource_claims(self) -> Collection:
        """resource.k8s.io/v1 ResourceClaims in every namespace (Kubernetes 1.34+; 404 on older clusters)."""
        return Collection("resourceclaims", self._resource.list_resource_claim_for_all_namespaces)

    def resource_slices(self) -> Collection:
        """resource.k8s.io/v1 ResourceSlices, cluster-scoped (Kubernetes 1.34+; 404 on older clusters)."""
        return Collection("resourceslices", self._resource.list_resource_slice)

    def config_map_collection(self, name: str, namespace: str) -> Collection:
        """One ConfigMap, as a collection of at most one (a field selector on its name), so it can be watched."""
        return Collection(
            "configmaps",
            partial(self._core.list_namespaced_config_map, namespace, field_selector=f"metadata.name={name}"),
        )

    # ---- single objects ----

    def patch_node(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of a node; returns the node as patched."""
        node: dict[str, Any] = _request(
            "patch",
            "nodes",
            lambda: raw_json(
                self._core.patch_node(
                    name, body, _content_type=MERGE_PATCH, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                )
            ),
        )
        return node

    def evict(self, name: str, namespace: str, uid: str | None = None) -> None:
        """A policy/v1 Eviction of a pod (429: a disruption budget refuses; 404: the pod is gone; 409: `uid`, a
        precondition, no longer names the pod under that name)."""
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid)) if uid else None
        body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace), delete_options=options)
        _request(
            "create",
            "pods/eviction",
            lambda: self._core.create_namespaced_pod_eviction(name, namespace, body, _request_timeout=REQUEST_TIMEOUT),
        )

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        _request(
            "create",
            "events",
            lambda: self._core.create_namespaced_event(namespace, body, _request_timeout=REQUEST_TIMEOUT),
        )

    def read_config_map(self, name: str, namespace: str) -> dict[str, Any]:
        return self._json("get", "configmaps", partial(self._core.read_namespaced_config_map, name, namespace))

    def create_config_map(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("create", "configmaps", partial(self._core.create_namespaced_config_map, namespace, body))

    def replace_config_map(self, name: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._json(
            "update", "configmaps", partial(self._core.replace_namespaced_config_map, name, namespace, body)
        )

    def read_lease(self, name: str, namespace: str) -> dict[str, Any]:
        return self._json("get", "leases", partial(self._coordination.read_namespaced_lease, name, namespace))

    def create_lease(self, namespace: str, body: dict[str, Any]) -> None:
        _request(
            "create",
            "leases",
            lambda: self._coordination.create_namespaced_lease(namespace, body, _request_timeout=REQUEST_TIMEOUT),
        )

    def replace_lease(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        """An update carrying the resourceVersion read: of two writers at most one wins (the other gets 409)."""
        _request(
            "update",
            "leases",
            lambda: self._coordination.replace_namespaced_lease(
                name, namespace, body, _request_timeout=REQUEST_TIMEOUT
            ),
        )

    @staticmethod
    def _json(verb: str, resource: str, call: Callable[..., Any]) -> dict[str, Any]:
        body: dict[str, Any] = _request(
            verb, resource, lambda: raw_json(call(_preload_content=False, _request_timeout=REQUEST_TIMEOUT))
        )
        return body


# ---- the failure policy ------------------------------------------------------------------------------------


class ApiCaller:
    """Runs one API call under the failure policy. Thread-safe counters; sleeping is injectable for tests."""

    def __init__(
        self,
        *,
        attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.sleep = sleep
        self.requests: Counter[tuple[str, str]] = Counter()
        self.retries: Counter[int] = Counter()
        self._denied: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def count(self, verb: str, resource: str) -> None:
        with self._lock:
            self.requests[verb, resource] += 1

    def __call__(
        self,
        verb: str,
        resource: str,
        call: Callable[[], T],
        *,
        allow: tuple[int, ...] = (),
        idempotent: bool = False,
    ) -> T:
        """Run `call`; every failure is raised as a typed `KubeApiError`. Statuses in `allow` are the caller's
        to handle: raised at once, not retried nor reported (an eviction's 429 is a budget's answer, not
        throttling). `idempotent` writes are retried on 409 too."""
        wait = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            self.count(verb, resource)
            try:
                return call()
            except (KubeApiError, *TRANSPORT_ERRORS) as raw:
                err = kube_error(raw, verb, resource)
            if err.status in allow:
                raise err
            if isinstance(err, Forbidden):
                self._report_denied(verb, resource, err.detail)
                raise err
            retried = isinstance(err, TooManyRequests | ServerError | Unreachable) or (
                idempotent and isinstance(err, Conflict)
            )
            if not retried:
                raise err
            delay = wait if err.retry_after is None else err.retry_after
            with self._lock:
                self.retries[err.status] += 1
            if attempt == self.attempts:
                raise err.with_message(
                    f"{verb} {resource}: gave up after {attempt} attempts: {err.status} {err.detail}"
                )
            log.warning("api=%s resource=%s status=%s retry_in=%.1fs", verb, resource, err.status, delay)
            self.sleep(min(delay, self.max_backoff_s))
            wait = min(wait * 2, self.max_backoff_s)
        raise AssertionError("unreachable")

    def read_or_none(self, resource: str, read: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """GET one object (under the failure policy); None when it does not exist (404)."""
        try:
            return self("get", resource, read, allow=(404,))
        except NotFound:
            return None

    def _report_denied(self, verb: str, resource: str, message: str) -> None:
        with self._lock:
            first = (verb, resource) not in self._denied
            self._denied.add((verb, resource))
        if first:
            log.error("RBAC denies verb=%s resource=%s: %s (grant it in migopt's ClusterRole)", verb, resource, message)
