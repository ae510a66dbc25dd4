"""Which changes to a pod's spec an update may make, as kube-apiserver's pod validation allows them.

A pod's spec is immutable but for container and init-container images, `activeDeadlineSeconds`, additions to
`tolerations` and `terminationGracePeriodSeconds`; anything else is refused with the API server's 422. The twin
schedules and runs pods on their GPU requests only, so an allowed change is kept for what the API shows and changes
nothing in the simulation.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from kubefacade.errors import invalid

SERVER_SET = ("nodeName", "priority", "schedulerName")
_MUTABLE = ("activeDeadlineSeconds", "terminationGracePeriodSeconds", "tolerations")
FORBIDDEN = (
    "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing "
    "tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
)


def client_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec without the fields the server fills in (binding, priority, scheduler)."""
    return {k: copy.deepcopy(v) for k, v in spec.items() if k not in SERVER_SET}


def _without_mutable(spec: Mapping[str, Any], images_from: Mapping[str, Any]) -> dict[str, Any]:
    """`spec` with the mutable fields dropped and its images taken from `images_from` (when the lists line up)."""
    result = {k: v for k, v in client_spec(spec).items() if k not in _MUTABLE}
    for field in ("containers", "initContainers"):
        mine, theirs = result.get(field), images_from.get(field)
        if isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs):
            result[field] = [
                {**c, "image": t.get("image")} if isinstance(c, dict) and isinstance(t, dict) else c
                for c, t in zip(mine, theirs, strict=True)
            ]
    return result


def updated_spec(name: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pod's new client spec, None when the update leaves it as it was; a 422 for a forbidden change (or a
    spec, or tolerations, that is not even the right JSON type)."""
    if not isinstance(new, Mapping) or not isinstance(new.get("tolerations") or [], list):
        raise invalid("Pod", name, FORBIDDEN)
    before, after = client_spec(old), client_spec(new)
    if before == after:
        return None
    if _without_mutable(after, before) != _without_mutable(before, before):
        raise invalid("Pod", name, FORBIDDEN)
    kept = [t for t in before.get("tolerations") or [] if t not in (after.get("tolerations") or [])]
    if kept:
        raise invalid("Pod", name, FORBIDDEN)
    return after
