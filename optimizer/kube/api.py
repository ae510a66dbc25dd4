"""Calls to the Kubernetes API with the failure policy every write needs, in one place.

- 429 (API priority and fairness) and 5xx back off (honouring `Retry-After`) and retry, a bounded number of times;
- 409 on an idempotent write (a merge patch without resourceVersion, an eviction) is retried like a 429;
  on a versioned update it is returned to the caller, which re-reads and retries (only it knows what to re-read);
- 403 is an RBAC denial: reported once per verb and resource, naming both, and raised as `RbacDenied`;
- connection errors count as 503.

Every request is counted by verb and resource (the benchmark's "API requests per reconcile", and a metric).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from solver.errors import MigoptError

log = logging.getLogger(__name__)
T = TypeVar("T")
# (connect, read) seconds for every call but watches: a half-open connection must fail, not hang the loop.
REQUEST_TIMEOUT = (10.0, 60.0)


class ApiError(MigoptError):
    """An API call that failed for good; `status` is the HTTP code (0 when the server could not be reached)."""

    def __init__(self, message: str, status: int, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class RbacDenied(ApiError):
    pass


def make_api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """In-cluster configuration by default; a kubeconfig (and context) when given, as kubectl would use it."""
    configuration = client.Configuration()
    if kubeconfig is None and context is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as err:
            raise MigoptError(f"not running in a cluster ({err}); pass --kubeconfig") from None
    else:
        try:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
        except (config.ConfigException, OSError, TypeError) as err:
            raise MigoptError(f"cannot load kubeconfig {kubeconfig or '(default)'}: {err}") from None
    configuration.retries = False  # the policy below retries, with backoff; urllib3 must not retry on its own
    return client.ApiClient(configuration)


def status_message(err: ApiException) -> tuple[str, str]:
    """(reason, message) of a Kubernetes `Status` body, or of the HTTP response when there is none."""
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    return str(body.get("reason") or err.reason or ""), str(body.get("message") or err.reason or "").strip()


def retry_after(err: ApiException, fallback: float) -> float:
    headers = err.headers or {}
    try:
        return max(0.0, float(headers.get("Retry-After", fallback)))
    except (TypeError, ValueError):
        return fallback


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
        """Run `call`; raise `ApiError` for statuses it should not retry, except those in `allow`, which the
        caller handles (raised as `ApiException` unchanged). `idempotent` writes are retried on 409 too."""
        wait = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            self.count(verb, resource)
            try:
                return call()
            except ApiException as err:
                status = err.status or 0
                if status in allow:
                    raise
                reason, message = status_message(err)
                if status == 403:
                    self._report_denied(verb, resource, message)
                    raise RbacDenied(f"RBAC denies {verb} {resource}: {message}", status, reason) from None
                if status != 429 and status < 500 and not (idempotent and status == 409):
                    raise ApiError(f"{verb} {resource}: {status} {reason}: {message}", status, reason) from None
                delay = retry_after(err, wait)
            except (urllib3.exceptions.HTTPError, OSError) as err:
                status, message, delay = 0, str(err).splitlines()[0], wait
            with self._lock:
                self.retries[status] += 1
            if attempt == self.attempts:
                raise ApiError(f"{verb} {resource}: gave up after {attempt} attempts: {status} {message}", status)
            log.warning("api=%s resource=%s status=%s retry_in=%.1fs", verb, resource, status, delay)
            self.sleep(min(delay, self.max_backoff_s))
            wait = min(wait * 2, self.max_backoff_s)
        raise AssertionError("unreachable")

    def read_or_none(self, resource: str, read: Callable[..., Any]) -> dict[str, Any] | None:
        """GET one object as a plain dict, under the failure policy; None when it does not exist (404)."""
        try:
            response = self(
                "get",
                resource,
                lambda: read(_preload_content=False, _request_timeout=REQUEST_TIMEOUT),
                allow=(404,),
            )
        except ApiException:
            return None
        body: dict[str, Any] = raw_json(response)
        return body

    def _report_denied(self, verb: str, resource: str, message: str) -> None:
        with self._lock:
            first = (verb, resource) not in self._denied
            self._denied.add((verb, resource))
        if first:
            log.error("RBAC denies verb=%s resource=%s: %s (grant it in migopt's ClusterRole)", verb, resource, message)


def raw_json(response: Any) -> Any:
    """The body of a `_preload_content=False` response: plain dicts are much cheaper than client models."""
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()
