"""Kubernetes objects the facade itself knows the rules of: Namespaces and PodDisruptionBudgets."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from kubefacade.errors import ApiError, invalid
from kubefacade.selectors import match_labels_selector

PDBS = "poddisruptionbudgets.policy"


def min_available(spec: Mapping[str, Any], expected: int) -> int:
    """`minAvailable` or `expected - maxUnavailable`, integers or percentages (rounded up, as Kubernetes does)."""

    def amount(value: Any) -> int:
        if isinstance(value, str) and value.endswith("%"):
            return math.ceil(expected * float(value[:-1]) / 100)
        return int(value)

    if spec.get("minAvailable") is not None:
        return amount(spec["minAvailable"])
    if spec.get("maxUnavailable") is not None:
        return max(0, expected - amount(spec["maxUnavailable"]))
    return 0


def validate_pdb(obj: Mapping[str, Any]) -> None:
    spec = obj.get("spec") or {}
    name = obj["metadata"]["name"]
    for field in ("minAvailable", "maxUnavailable"):
        value = spec.get(field)
        if value is None:
            continue
        ok = (isinstance(value, int) and value >= 0) or (isinstance(value, str) and re.fullmatch(r"\d+%", value))
        if not ok:
            raise invalid("PodDisruptionBudget", name, f"spec.{field}: Invalid value: {value!r}", group="policy")
    if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
        raise invalid(
            "PodDisruptionBudget", name, "spec: minAvailable and maxUnavailable cannot be both set", group="policy"
        )
    try:
        match_labels_selector(spec.get("selector"))
    except ApiError as err:
        raise invalid("PodDisruptionBudget", name, f"spec.selector: {err.message}", group="policy") from None


def namespace_object(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"},
    }  # fmt: skip
