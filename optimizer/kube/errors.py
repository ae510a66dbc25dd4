"""Typed Kubernetes API errors: callers branch on a class, not on the `kubernetes` library's exception.

`optimizer.kube.api` turns every failed request (an HTTP error status, a server that could not be reached) into
one of these, in one place, so no other module imports `kubernetes` to tell a 404 from a 409. This module itself
imports nothing of `kubernetes`: the classes are plain data, cheap to build in tests.
"""

from __future__ import annotations

from solver.errors import MigoptError


class KubeApiError(MigoptError):
    """A request that failed. `status` is the HTTP code (0 when there was no HTTP answer), `reason` the `Status`
    reason (`NotFound`, `Conflict`, ...), `detail` the server's message; `retry_after` the seconds the server asked
    to wait (its `Retry-After`), None when it did not say. `str()` is one line naming verb and resource."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        verb: str = "",
        resource: str = "",
        reason: str = "",
        detail: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.verb = verb
        self.resource = resource
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after

    def with_message(self, message: str) -> KubeApiError:
        """The same error (same class and fields) saying something else, e.g. that retries gave up."""
        return type(self)(
            message,
            status=self.status,
            verb=self.verb,
            resource=self.resource,
            reason=self.reason,
            detail=self.detail,
            retry_after=self.retry_after,
        )


class NotFound(KubeApiError):
    """404: the object is not there (a read of something never created, an eviction of a pod already gone)."""


class Conflict(KubeApiError):
    """409: a write lost a race (a stale resourceVersion, or a create of something that exists): re-read."""


class Gone(KubeApiError):
    """410: a watch's resourceVersion left the server's history: relist."""


class Forbidden(KubeApiError):
    """403: RBAC denies the verb on the resource; retrying cannot help, the ClusterRole must grant it."""


class TooManyRequests(KubeApiError):
    """429: API priority and fairness throttled the request (retry after `retry_after`), or, on an eviction, a
    PodDisruptionBudget refused it (nothing happened; ask again later)."""


class ServerError(KubeApiError):
    """5xx: the server failed (or is overloaded); the request may succeed if retried."""


class Unreachable(KubeApiError):
    """No HTTP answer at all: connection refused or reset, TLS failure, timeout (`status` is 0)."""


_BY_STATUS: dict[int, type[KubeApiError]] = {
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    429: TooManyRequests,
}


def error_class(status: int) -> type[KubeApiError]:
    """The class for an HTTP status; statuses nobody branches on (400, 401, 422, ...) get the base class."""
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, KubeApiError)


def api_error(
    status: int,
    *,
    verb: str,
    resource: str,
    reason: str = "",
    detail: str = "",
    retry_after: float | None = None,
) -> KubeApiError:
    """The typed error for an HTTP error answer, with its one-line message (a 403 names what RBAC must grant)."""
    cls = error_class(status)
    if cls is Forbidden:
        message = f"RBAC denies {verb} {resource}: {detail}"
    else:
        message = f"{verb} {resource}: {status} {reason}: {detail}"
    return cls(
        message,
        status=status,
        verb=verb,
        resource=resource,
        reason=reason,
        detail=detail,
        retry_after=retry_after,
    )


def parse_retry_after(value: object) -> float | None:
    """`Retry-After` in seconds (never negative); None when absent or not a number (an HTTP date is not honoured:
    the caller's own backoff applies instead)."""
    if value is None:
        return None
    try:
        return max(0.0, float(str(value)))
    except ValueError:
        return None
