"""Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for (`Accept: ...;as=Table`).

Columns follow what kube-apiserver prints for nodes and pods (priority 1 columns appear with `-o wide`);
every other resource gets NAME and AGE. Rows carry the object's metadata, which kubectl uses for
`--show-labels` and the NAMESPACE column of `-A`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from kubefacade.resources import Resource
from kubefacade.store import Stored

Column = tuple[str, str, int, Callable[[dict[str, Any], datetime], Any]]


def age(created: str | None, now: datetime) -> str:
    if not created:
        return "<unknown>"
    seconds = max(0, int((now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h{minutes % 60}m" if hours < 8 and minutes % 60 else f"{hours}h"
    return f"{hours // 24}d"


def _meta_age(obj: dict[str, Any], now: datetime) -> str:
    return age(obj["metadata"].get("creationTimestamp"), now)


def _node_status(obj: dict[str, Any], _: datetime) -> str:
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in obj["status"].get("conditions", []))
    status = "Ready" if ready else "NotReady"
    return status + (",SchedulingDisabled" if obj["spec"].get("unschedulable") else "")


def _roles(obj: dict[str, Any], _: datetime) -> str:
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k.removeprefix(prefix) for k in obj["metadata"].get("labels", {}) if k.startswith(prefix))
    return ",".join(roles) or "<none>"


def _address(kind: str) -> Callable[[dict[str, Any], datetime], str]:
    def pick(obj: dict[str, Any], _: datetime) -> str:
        found = [a["address"] for a in obj["status"].get("addresses", []) if a.get("type") == kind]
        return found[0] if found else "<none>"

    return pick


def _info(field: str) -> Callable[[dict[str, Any], datetime], str]:
    return lambda obj, _: str(obj["status"].get("nodeInfo", {}).get(field, ""))


def _ready(obj: dict[str, Any], _: datetime) -> str:
    containers = obj["spec"].get("containers") or []
    statuses = obj["status"].get("containerStatuses") or []
    return f"{sum(1 for s in statuses if s.get('ready'))}/{len(containers)}"


def _pod_status(obj: dict[str, Any], _: datetime) -> str:
    if obj["metadata"].get("deletionTimestamp"):
        return "Terminating"
    phase = str(obj["status"].get("phase", ""))
    return "Completed" if phase == "Succeeded" else phase


NODE_COLUMNS: list[Column] = [
    ("Name", "name", 0, lambda o, _: o["metadata"]["name"]),
    ("Status", "", 0, _node_status),
    ("Roles", "", 0, _roles),
    ("Age", "", 0, _meta_age),
    ("Version", "", 0, _info("kubeletVersion")),
    ("Internal-IP", "", 1, _address("InternalIP")),
    ("External-IP", "", 1, _address("ExternalIP")),
    ("OS-Image", "", 1, _info("osImage")),
    ("Kernel-Version", "", 1, _info("kernelVersion")),
    ("Container-Runtime", "", 1, _info("containerRuntimeVersion")),
]
POD_COLUMNS: list[Column] = [
    ("Name", "name", 0, lambda o, _: o["metadata"]["name"]),
    ("Ready", "", 0, _ready),
    ("Status", "", 0, _pod_status),
    ("Restarts", "", 0, lambda o, _: 0),
    ("Age", "", 0, _meta_age),
    ("IP", "", 1, lambda o, _: "<none>"),
    ("Node", "", 1, lambda o, _: o["spec"].get("nodeName") or "<none>"),
    ("Nominated Node", "", 1, lambda o, _: "<none>"),
    ("Readiness Gates", "", 1, lambda o, _: "<none>"),
]
DEFAULT_COLUMNS: list[Column] = [
    ("Name", "name", 0, lambda o, _: o["metadata"]["name"]),
    ("Age", "", 0, _meta_age),
]


def table(res: Resource, items: Iterable[Stored], resource_version: int, now: datetime | None = None) -> dict[str, Any]:
    columns = {"nodes": NODE_COLUMNS, "pods": POD_COLUMNS}.get(res.key, DEFAULT_COLUMNS)
    moment = now or datetime.now(UTC)
    rows = [
        {
            "cells": [cell(s.obj, moment) for *_, cell in columns],
            "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": s.obj["metadata"]},
        }
        for s in items
    ]
    definitions = [
        {"name": name, "type": "integer" if name == "Restarts" else "string", "format": fmt, "description": name,
         "priority": priority}
        for name, fmt, priority, _ in columns
    ]  # fmt: skip
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": str(resource_version)},
        "columnDefinitions": definitions, "rows": rows,
    }  # fmt: skip
