"""Label and field selectors as list and watch requests carry them (`labelSelector`, `fieldSelector`).

Label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k` (does not exist),
comma-separated, all must hold. Field selectors: `=`, `==`, `!=` on the field labels kube-apiserver supports for
each resource (`FIELD_LABELS`: pods by node, phase and more; events by reason, type, involved object and source).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from kubefacade.errors import bad_request

Matcher = Callable[[dict[str, Any]], bool]
_SET = re.compile(r"^\s*(!?)([A-Za-z0-9._/-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([A-Za-z0-9._/-]+)\s*$")


def _split(selector: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


LabelTest = Callable[[Mapping[str, str]], bool]


def _label_requirement(text: str) -> LabelTest:
    if m := _SET.match(text):
        if m.group(1):
            raise bad_request(f"unable to parse requirement: {text!r}")
        key, op = m.group(2), m.group(3)
        values = {v.strip() for v in m.group(4).split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _EQ.match(text):
        key, op, value = m.group(1), m.group(2), m.group(3)
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _EXISTS.match(text):
        key = m.group(2)
        if m.group(1):
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise bad_request(f"unable to parse requirement: {text!r}")


def label_matcher(selector: str | None) -> LabelTest:
    """A test on a label map; an empty selector matches everything."""
    tests = [_label_requirement(part) for part in _split(selector or "")]
    return lambda labels: all(test(labels) for test in tests)


def match_labels_selector(selector: Mapping[str, Any] | None) -> LabelTest:
    """A `LabelSelector` object (`matchLabels`, `matchExpressions`) as a PDB carries it."""
    selector = selector or {}
    exact = dict(selector.get("matchLabels") or {})
    tests: list[LabelTest] = [lambda labels: all(labels.get(k) == v for k, v in exact.items())]
    for expr in selector.get("matchExpressions") or []:
        tests.append(_expression(str(expr.get("key", "")), str(expr.get("operator", "")), expr.get("values") or []))
    return lambda labels: all(test(labels) for test in tests)


def _expression(key: str, op: str, values: list[str]) -> LabelTest:
    wanted = set(values)
    if op == "In":
        return lambda labels: labels.get(key) in wanted
    if op == "NotIn":
        return lambda labels: labels.get(key) not in wanted
    if op == "Exists":
        return lambda labels: key in labels
    if op == "DoesNotExist":
        return lambda labels: key not in labels
    raise bad_request(f"unknown label selector operator {op!r}")


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """A dotted field as the API server compares it: a string, "" when absent, booleans lower-case."""
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, Mapping):
            return ""
        current = current.get(part)
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


_FIELDS = re.compile(r"^\s*([A-Za-z0-9.]+)\s*(==|=|!=)\s*(.*?)\s*$")
_META = {"metadata.name": "metadata.name", "metadata.namespace": "metadata.namespace"}
_INVOLVED = ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
FIELD_LABELS: dict[str, dict[str, str]] = {
    "pods": _META | {f: f for f in (
        "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "spec.hostNetwork",
        "status.phase", "status.podIP", "status.nominatedNodeName")},
    "nodes": _META | {"spec.unschedulable": "spec.unschedulable"},
    "namespaces": _META | {"status.phase": "status.phase"},
    "events": _META | {f"involvedObject.{f}": f"involvedObject.{f}" for f in _INVOLVED} | {
        "reason": "reason", "type": "type", "source": "source.component", "reportingComponent": "reportingComponent"},
    "events.events.k8s.io": _META | {f"regarding.{f}": f"regarding.{f}" for f in _INVOLVED} | {
        "reason": "reason", "type": "type", "reportingController": "reportingController",
        "deprecatedSource": "deprecatedSource.component"},
}  # fmt: skip
"""The field labels kube-apiserver accepts in a field selector, by resource (label -> where the value is); any
other resource takes `metadata.name` and `metadata.namespace` only."""
_FALSE_WHEN_ABSENT = frozenset({"spec.unschedulable", "spec.hostNetwork"})


def field_matcher(selector: str | None, resource: str = "") -> Matcher:
    """A test on a whole object of `resource` (a store key: `pods`, `events.events.k8s.io`); a field label that
    resource does not support is a 400, as on a real server."""
    labels = FIELD_LABELS.get(resource, _META)
    tests: list[Matcher] = []
    for part in _split(selector or ""):
        m = _FIELDS.match(part)
        if m is None:
            raise bad_request(f"invalid field selector: {part!r}")
        label, op, value = m.groups()
        path = labels.get(label)
        if path is None:
            raise bad_request(f"field label not supported: {label}")
        tests.append(_field_test(path, op != "!=", value))
    return lambda obj: all(test(obj) for test in tests)


def _field_test(path: str, equal: bool, value: str) -> Matcher:
    default = "false" if path in _FALSE_WHEN_ABSENT else ""
    return lambda obj: ((field_value(obj, path) or default) == value) == equal


def object_matcher(label_selector: str | None, field_selector: str | None, resource: str = "") -> Matcher:
    labels = label_matcher(label_selector)
    fields = field_matcher(field_selector, resource)
    return lambda obj: labels(obj.get("metadata", {}).get("labels") or {}) and fields(obj)
