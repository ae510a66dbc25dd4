"""Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for (`Accept: ...;as=Table`).

Columns follow what kube-apiserver prints (its `printers/internalversion`) for nodes, pods, events (both APIs),
PodDisruptionBudgets, Leases, ConfigMaps, Namespaces, ResourceClaims and ResourceSlices; priority 1 columns appear
with `-o wide`. Rows carry the object's metadata, which kubectl uses for `--show-labels` and the NAMESPACE column
of `-A`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from kubefacade.resources import Resource
from kubefacade.store import Stored

Cell = Callable[[dict[str, Any], datetime], Any]
Column = tuple[str, str, int, Cell]
INTEGER_COLUMNS = frozenset({"Restarts", "Data", "Allowed Disruptions"})


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


def _event_view(obj: dict[str, Any]) -> dict[str, Any]:
    """An events.k8s.io/v1 Event as the core v1 fields the printer reads (the API server converts the same way)."""
    if "involvedObject" in obj or "regarding" not in obj:
        return obj
    return {
        "involvedObject": obj.get("regarding") or {}, "message": obj.get("note", ""), "type": obj.get("type", ""),
        "reason": obj.get("reason", ""), "count": obj.get("deprecatedCount", 0),
        "firstTimestamp": obj.get("deprecatedFirstTimestamp"), "lastTimestamp": obj.get("deprecatedLastTimestamp"),
        "eventTime": obj.get("eventTime"), "series": obj.get("series"),
        "source": obj.get("deprecatedSource") or {"component": obj.get("reportingController", "")},
    }  # fmt: skip


def _event_first(obj: dict[str, Any], now: datetime) -> str:
    event = _event_view(obj)
    return age(event.get("firstTimestamp") or event.get("eventTime"), now)


def _event_last(obj: dict[str, Any], now: datetime) -> str:
    event = _event_view(obj)
    series = event.get("series") or {}
    if series.get("lastObservedTime"):
        return age(series["lastObservedTime"], now)
    return age(event.get("lastTimestamp"), now) if event.get("lastTimestamp") else _event_first(obj, now)


def _event_count(obj: dict[str, Any], _: datetime) -> int:
    event = _event_view(obj)
    series = event.get("series") or {}
    return int(series.get("count") or event.get("count") or 1)


def _event_object(obj: dict[str, Any], _: datetime) -> str:
    about = _event_view(obj).get("involvedObject") or {}
    kind = str(about.get("kind", "")).lower()
    return f"{kind}/{about['name']}" if about.get("name") else kind


def _event_source(obj: dict[str, Any], _: datetime) -> str:
    source = _event_view(obj).get("source") or {}
    text = str(source.get("component", ""))
    return f"{text}, {source['host']}" if source.get("host") else text


def _event_field(field: str) -> Cell:
    return lambda obj, _: str(_event_view(obj).get(field) or "").strip()


EVENT_COLUMNS: list[Column] = [
    ("Last Seen", "", 0, _event_last),
    ("Type", "", 0, _event_field("type")),
    ("Reason", "", 0, _event_field("reason")),
    ("Object", "", 0, _event_object),
    ("Subobject", "", 1, lambda o, _: str((_event_view(o).get("involvedObject") or {}).get("fieldPath", ""))),
    ("Source", "", 1, _event_source),
    ("Message", "", 0, _event_field("message")),
    ("First Seen", "", 1, _event_first),
    ("Count", "", 1, _event_count),
    ("Name", "name", 1, lambda o, _: o["metadata"]["name"]),
]


def _budget(field: str) -> Cell:
    def pick(obj: dict[str, Any], _: datetime) -> str:
        value = (obj.get("spec") or {}).get(field)
        return "N/A" if value is None else str(value)

    return pick


PDB_COLUMNS: list[Column] = [
    ("Name", "name", 0, lambda o, _: o["metadata"]["name"]),
    ("Min Available", "", 0, _budget("minAvailable")),
    ("Max Unavailable", "", 0, _budget("maxUnavailable")),
    ("Allowed Disruptions", "", 0, lambda o, _: int((o.get("status") or {}).get("disruptionsAllowed") or 0)),
    ("Age", "", 0, _meta_age),
]
LEASE_COLUMNS: list[Column] = [
    ("Name", "name", 0, lambda o, _: o["metadata"]["name"]),
    ("Holder", "", 0, lambda o, _: str((o.get("spec") or {}).get("holderIdentity") or "")),
    ("Age", "", 0, _meta_age),
]
CONFIGMAP_COLUMNS: list[Column] = [
    ("Name", "name", 0, lambda o, _: o["metadata"]["name"]),
    ("Data", "", 0, lambda o, _: len(o.get("data") or {}) + len(o.get("binaryData") or {})),
    ("Age", "", 0, _meta_age),
]
NAMESPACE_COLUMNS: list[Column] = [
    ("Name", "name", 0, lambda o, _: o["metadata"]["name"]),
    ("Status", "", 0, lambda o, _: str((o.get("status") or {}).get("phase", ""))),
    ("Age", "", 0, _meta_age),
]


def _claim_state(obj: dict[str, Any], _: datetime) -> str:
    """`pending`, `allocated`, `allocated,reserved`, with `deleted` first while it is being deleted."""
    status = obj.get("status") or {}
    states = ["deleted"] if obj["metadata"].get("deletionTimestamp") else []
    if status.get("allocation"):
        states += ["allocated", "reserved"] if status.get("reservedFor") else ["allocated"]
    elif not states:
        states = ["pending"]
    return ",".join(states)


RESOURCECLAIM_COLUMNS: list[Column] = [
    ("Name", "name", 0, lambda o, _: o["metadata"]["name"]),
    ("State", "", 0, _claim_state),
    ("Age", "", 0, _meta_age),
]
RESOURCESLICE_COLUMNS: list[Column] = [
    ("Name", "name", 0, lambda o, _: o["metadata"]["name"]),
    ("Node", "", 0, lambda o, _: str((o.get("spec") or {}).get("nodeName") or "<none>")),
    ("Driver", "", 0, lambda o, _: str((o.get("spec") or {}).get("driver") or "")),
    ("Pool", "", 0, lambda o, _: str(((o.get("spec") or {}).get("pool") or {}).get("name") or "")),
    ("Age", "", 0, _meta_age),
]
COLUMNS = {
    "nodes": NODE_COLUMNS, "pods": POD_COLUMNS, "events": EVENT_COLUMNS, "events.events.k8s.io": EVENT_COLUMNS,
    "poddisruptionbudgets.policy": PDB_COLUMNS, "leases.coordination.k8s.io": LEASE_COLUMNS,
    "configmaps": CONFIGMAP_COLUMNS, "namespaces": NAMESPACE_COLUMNS,
    "resourceclaims.resource.k8s.io": RESOURCECLAIM_COLUMNS, "resourceslices.resource.k8s.io": RESOURCESLICE_COLUMNS,
}  # fmt: skip


def _cell(cell: Callable[[dict[str, Any], datetime], Any], obj: dict[str, Any], now: datetime) -> Any:
    """One cell; an object stored with a field of the wrong shape shows `<invalid>` there, as kubectl prints a
    value it cannot read, instead of failing the whole list."""
    try:
        return cell(obj, now)
    except (ValueError, TypeError, AttributeError, KeyError):
        return "<invalid>"


def table(res: Resource, items: Iterable[Stored], resource_version: int, now: datetime | None = None) -> dict[str, Any]:
    columns = COLUMNS.get(res.key, DEFAULT_COLUMNS)
    moment = now or datetime.now(UTC)
    rows = [
        {
            "cells": [_cell(cell, s.obj, moment) for *_, cell in columns],
            "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": s.obj["metadata"]},
        }
        for s in items
    ]
    definitions = [
        {"name": name, "type": "integer" if name in INTEGER_COLUMNS else "string", "format": fmt,
         "description": name, "priority": priority}
        for name, fmt, priority, _ in columns
    ]  # fmt: skip
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": str(resource_version)},
        "columnDefinitions": definitions, "rows": rows,
    }  # fmt: skip
