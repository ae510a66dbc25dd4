"""Fault injection: make the next N requests matching (verb, resource[, name]) fail, close open watch streams,
expire the watch history. Settable in-process (`server.faults`) and over HTTP (`POST /migopt-twin/faults`),
so a controller running in another process can be driven through failures.

JSON body of `POST /migopt-twin/faults` (all keys optional; `FaultRequest`):

    {"rules": [{"verb": "patch", "resource": "nodes", "name": "n1", "code": 403, "count": 1,
                "retry_after_s": 1, "message": null, "user": "x"}],
     "close_watches": false, "expire_history": false, "clear": false}
"""

from __future__ import annotations

import threading
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kubefacade.errors import ApiError

Verb = Literal["get", "list", "watch", "create", "update", "patch", "delete", "*"]


class FaultRule(BaseModel):
    """Fail the next `count` requests matching `verb` and `resource` (`pods/eviction` for evictions; `*` any)
    and, when given, `name` and `namespace`."""

    model_config = ConfigDict(extra="forbid")

    verb: Verb = "*"
    resource: str = "*"
    name: str | None = None
    namespace: str | None = None
    code: Literal[403, 404, 409, 429, 500, 503] = 500
    count: int = Field(default=1, ge=1)
    retry_after_s: int = Field(default=1, ge=0, description="the Retry-After header of a 429")
    message: str | None = None
    user: str = Field(default="system:serviceaccount:migopt:migopt", description="who a 403 says was refused")


class FaultRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[FaultRule] = []
    close_watches: bool = False
    expire_history: bool = False
    clear: bool = Field(default=False, description="drop the rules not yet used up (applied before `rules`)")


def _forbidden_message(rule: FaultRule, verb: str, resource: str, group: str, name: str, namespace: str) -> str:
    base, _, sub = resource.partition("/")
    what = f'{base} "{name}"' if name else base
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    sub_text = f"/{sub}" if sub else ""
    action = f'cannot {verb} resource "{base}{sub_text}" in API group "{group}" {scope}'
    return f'{what} is forbidden: User "{rule.user}" {action}'


class Faults:
    """The armed rules; `check` raises the first matching rule's error and uses one of its count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self.fired: list[dict[str, object]] = []

    def add(self, rule: FaultRule) -> None:
        with self._lock:
            self._rules.append(rule.model_copy())

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    @property
    def armed(self) -> list[FaultRule]:
        with self._lock:
            return [r.model_copy() for r in self._rules]

    def check(self, verb: str, resource: str, group: str, name: str, namespace: str) -> None:
        with self._lock:
            for rule in self._rules:
                if rule.verb not in ("*", verb) or rule.resource not in ("*", resource):
                    continue
                if rule.name is not None and rule.name != name:
                    continue
                if rule.namespace is not None and rule.namespace != namespace:
                    continue
                rule.count -= 1
                if rule.count == 0:
                    self._rules.remove(rule)
                self.fired.append({"verb": verb, "resource": resource, "name": name, "code": rule.code})
                raise _error(rule, verb, resource, group, name, namespace)


def _error(rule: FaultRule, verb: str, resource: str, group: str, name: str, namespace: str) -> ApiError:
    if rule.code == 403:
        return ApiError(403, rule.message or _forbidden_message(rule, verb, resource, group, name, namespace))
    if rule.code == 429:
        return ApiError(
            429, rule.message or "Too many requests, please try again later.", retry_after_s=rule.retry_after_s,
            details={"retryAfterSeconds": rule.retry_after_s},
        )  # fmt: skip
    if rule.code == 409:
        qualified = f"{resource}.{group}" if group else resource
        return ApiError(
            409, rule.message or f'Operation cannot be fulfilled on {qualified} "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again",
        )  # fmt: skip
    if rule.code == 404:  # what a server that does not serve the resource (or its group version) answers
        return ApiError(404, rule.message or "the server could not find the requested resource")
    if rule.code == 503:
        return ApiError(503, rule.message or "the server is currently unable to handle the request")
    return ApiError(500, rule.message or "Internal error occurred: injected fault")
