"""Kubernetes `Status` errors: every failed request answers with one, as a kube-apiserver would."""

from __future__ import annotations

from typing import Any

_REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


class ApiError(Exception):
    """A request that fails with a Kubernetes `Status` (code, reason, message, optional details)."""

    def __init__(
        self, code: int, message: str, *, reason: str | None = None, details: dict[str, Any] | None = None,
        retry_after_s: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = details
        self.retry_after_s = retry_after_s

    def status(self) -> dict[str, Any]:
        return status_object(self.code, self.reason, self.message, self.details)


def status_object(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
        "reason": reason, "code": code,
    }  # fmt: skip
    if details:
        body["details"] = details
    return body


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    qualified = f"{resource}.{group}" if group else resource
    return ApiError(404, f'{qualified} "{name}" not found', details={"name": name, "group": group, "kind": resource})


def already_exists(resource: str, name: str, group: str = "") -> ApiError:
    qualified = f"{resource}.{group}" if group else resource
    return ApiError(
        409, f'{qualified} "{name}" already exists', reason="AlreadyExists",
        details={"name": name, "group": group, "kind": resource},
    )  # fmt: skip


def conflict(resource: str, name: str, group: str = "") -> ApiError:
    qualified = f"{resource}.{group}" if group else resource
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {qualified} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        details={"name": name, "group": group, "kind": resource},
    )


def invalid(kind: str, name: str, message: str, group: str = "") -> ApiError:
    """422 with the cause as kube-apiserver lists it (`field: detail`), which kubectl prints after the name."""
    field, _, detail = message.partition(": ") if ": " in message else ("", "", message)
    reason = next((r for p, r in _CAUSES if detail.startswith(p)), "FieldValueInvalid")
    cause = {"reason": reason, "message": detail, "field": field}
    details = {"name": name, "group": group, "kind": kind, "causes": [cause]}
    return ApiError(422, f'{kind} "{name}" is invalid: {message}', details=details)


_CAUSES = (
    ("Forbidden", "FieldValueForbidden"), ("Required value", "FieldValueRequired"),
    ("Unsupported value", "FieldValueNotSupported"), ("Duplicate value", "FieldValueDuplicate"),
)  # fmt: skip


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)
