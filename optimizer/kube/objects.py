"""Kubernetes objects (as the API's JSON) → the planner's pods: which pods wait for MIG devices, which hold them.

Pure functions over plain dicts, so they are tested with literal API objects and shared by every source.
A pending pod whose request the catalog does not know is reported (returned as a problem), never planned and
never allowed to spoil the snapshot of everyone else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from optimizer.controller.eviction import EvictionCandidate, eviction_verdict
from solver.errors import MigoptError
from solver.profiles import MIG_RESOURCE_PREFIX
from solver.snapshot import (
    GPU_RESOURCE,
    MAX_DEVICES_PER_REQUEST,
    NodeSelectorTerm,
    PendingPod,
    RunningPod,
    Taint,
    Toleration,
    check_pending_pod,
    clamp_priority,
)

Obj = Mapping[str, Any]


def pod_key(pod: Obj) -> str:
    meta = pod["metadata"]
    return f"{meta.get('namespace') or 'default'}/{meta['name']}"


_SUFFIXES = {"": Decimal(1), "m": Decimal("0.001"), "u": Decimal("0.000001"), "n": Decimal("0.000000001")}
_SUFFIXES |= {s: Decimal(1000**i) for i, s in enumerate("kMGTPE", 1)}
_SUFFIXES |= {f"{s}i": Decimal(1024**i) for i, s in enumerate("KMGTPE", 1)}
_QUANTITY = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:(Ki|Mi|Gi|Ti|Pi|Ei|[munkMGTPE])|[eE]([+-]?[0-9]+))?")


def _quantity(value: object) -> int:
    """A device count from a resource quantity as the API spells it (`2`, or canonically `1k`, `100E`),
    clamped to `MAX_DEVICES_PER_REQUEST` (a larger request is still more than any node holds). Extended
    resources are whole and non-negative; anything else (a `500m`, `-1`, garbage) counts as 0 rather than
    crashing."""
    match = _QUANTITY.fullmatch(str(value).strip())
    if match is None:
        return 0
    number, suffix, exponent = match.groups()
    amount = Decimal(number)
    if amount <= 0:
        return 0
    digits = (exponent or "").lstrip("+-").lstrip("0")
    if not digits:
        power = 0
    elif len(digits) < 20:
        power = int(exponent)
    else:  # beyond any range: only its sign matters
        power = -(10**20) if exponent.startswith("-") else 10**20
    magnitude = amount.adjusted() + power  # the power of ten of its leading digit, known before computing it
    if magnitude < -40:
        return 0
    if magnitude > 40:
        return MAX_DEVICES_PER_REQUEST
    try:
        amount = amount.scaleb(power) * _SUFFIXES[suffix or ""]
    except ArithmeticError:  # megabytes of digits cancelled by an exponent as long: beyond decimal's range
        return 0
    if amount >= MAX_DEVICES_PER_REQUEST:
        return MAX_DEVICES_PER_REQUEST
    return int(amount) if amount == amount.to_integral_value() else 0


def _priority(value: object) -> int:
    """`spec.priority`, an int32 in the API: clamped into that range, and 0 when not a number, rather than
    failing the snapshot."""
    if isinstance(value, int) and not isinstance(value, bool):
        return clamp_priority(value)
    try:
        return clamp_priority(int(str(value).strip()))
    except ValueError:
        return 0


def is_gpu_resource(resource: str) -> bool:
    return resource == GPU_RESOURCE or resource.startswith(MIG_RESOURCE_PREFIX)


def pod_requests(pod: Obj) -> dict[str, int]:
    """The pod's effective `nvidia.com/*` GPU requests: the sum over containers, or the largest init container's
    if larger (Kubernetes' rule). Extended resources are set in limits (requests default to them)."""
    spec = pod.get("spec") or {}

    def of(container: Obj) -> dict[str, int]:
        resources = container.get("resources") or {}
        merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        return {k: _quantity(v) for k, v in merged.items() if is_gpu_resource(k)}

    total: dict[str, int] = {}
    for container in spec.get("containers") or []:
        for k, v in of(container).items():
            total[k] = total.get(k, 0) + v
    for container in spec.get("initContainers") or []:
        for k, v in of(container).items():
            total[k] = max(total.get(k, 0), v)
    return {k: min(v, MAX_DEVICES_PER_REQUEST) for k, v in total.items() if v > 0}


def is_unschedulable(pod: Obj) -> bool:
    """Pending, unbound, not being deleted, and the scheduler said it cannot place it."""
    status = pod.get("status") or {}
    if status.get("phase") != "Pending" or (pod.get("spec") or {}).get("nodeName"):
        return False
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(
        c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
        for c in status.get("conditions") or []
    )


def holds_devices(pod: Obj) -> bool:
    """Bound to a node and not finished: it holds (or is about to hold) the GPU devices it requests."""
    phase = (pod.get("status") or {}).get("phase")
    return bool((pod.get("spec") or {}).get("nodeName")) and phase in ("Pending", "Running", "Unknown")


def _affinity_terms(spec: Obj) -> list[NodeSelectorTerm]:
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    return [
        NodeSelectorTerm.model_validate({"matchExpressions": term.get("matchExpressions") or []})
        for term in required.get("nodeSelectorTerms") or []
    ]


def pending_pod(pod: Obj) -> PendingPod:
    """The planner's view of an unschedulable pod; `MigoptError` (one line, naming the pod) if it is malformed."""
    spec = pod.get("spec") or {}
    name = pod_key(pod)
    try:
        result = PendingPod(
            name=name,
            requests=pod_requests(pod),
            priority=_priority(spec.get("priority")),
            node_selector=dict(spec.get("nodeSelector") or {}),
            node_affinity=_affinity_terms(spec),
            tolerations=[_toleration(t) for t in spec.get("tolerations") or []],
        )
    except (ValidationError, ValueError, TypeError) as err:
        raise MigoptError(f"pod {name}: cannot read its scheduling constraints: {str(err).splitlines()[0]}") from None
    check_pending_pod(result)
    return result


def _toleration(raw: Obj) -> Toleration:
    return Toleration(
        key=raw.get("key") or "",
        operator=raw.get("operator") or "Equal",
        value=raw.get("value") or "",
        effect=raw.get("effect") or "",
    )


def owner_kinds(pod: Obj) -> set[str]:
    return {ref.get("kind", "") for ref in (pod.get("metadata") or {}).get("ownerReferences") or []}


def eviction_candidate(pod: Obj, blocking_budget: str | None = None) -> EvictionCandidate:
    """What the eviction rules read of a pod object: owners' kinds and annotations (values as strings, so a
    malformed object cannot fail the snapshot), plus the budget that blocks it, if the caller knows one."""
    meta = pod.get("metadata") or {}
    return EvictionCandidate(
        name=pod_key(pod),
        owner_kinds=frozenset(owner_kinds(pod)),
        annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
        blocking_budget=blocking_budget,
    )


def running_pod(pod: Obj, blocking_budgets: Mapping[str, str] | None = None) -> RunningPod:
    """What evicting a pod would cost, and why it may not be evicted (`optimizer.controller.eviction`'s rules);
    `blocking_budgets` is `pods_without_disruption_budget`'s answer."""
    name = pod_key(pod)
    verdict = eviction_verdict(eviction_candidate(pod, (blocking_budgets or {}).get(name)))
    uid = (pod.get("metadata") or {}).get("uid")
    return RunningPod(
        name=name,
        priority=_priority((pod.get("spec") or {}).get("priority")),
        protection=verdict.protection,
        uid=str(uid) if uid else None,
    )


def node_taints(node: Obj) -> list[Taint]:
    taints = []
    for raw in (node.get("spec") or {}).get("taints") or []:
        effect = raw.get("effect") or "NoSchedule"
        if effect in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            taints.append(Taint(key=raw.get("key") or "", value=raw.get("value") or "", effect=effect))
    return taints


def node_allocatable(node: Obj) -> dict[str, int]:
    """The node's GPU resources as kubelet reports them (other resources are not the planner's business)."""
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    return {k: _quantity(v) for k, v in allocatable.items() if is_gpu_resource(k)}


def selector_matches(selector: Obj | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions). An empty selector matches everything (policy/v1; a PDB
    with no selector at all matches nothing, which the caller checks)."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), set(expr.get("values") or [])
        present = key in labels
        if (
            (op == "In" and (not present or labels[key] not in values))
            or (op == "NotIn" and present and labels[key] in values)
            or (op == "Exists" and not present)
            or (op == "DoesNotExist" and present)
        ):
            return False
    return True


def pods_without_disruption_budget(pdbs: Iterable[Obj], pods: Iterable[Obj]) -> dict[str, str]:
    """Pods covered by a PodDisruptionBudget whose status allows no disruption now, each with that budget's
    `namespace/name` (the first such budget, in listing order): planning around them is cheaper than a drain
    the Eviction API would refuse until the deadline."""
    blocked_budgets = [pdb for pdb in pdbs if (pdb.get("status") or {}).get("disruptionsAllowed", 1) == 0]
    if not blocked_budgets:
        return {}
    result: dict[str, str] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        for pdb in blocked_budgets:
            selector = (pdb.get("spec") or {}).get("selector")
            same_namespace = (pdb["metadata"].get("namespace") or "default") == (meta.get("namespace") or "default")
            if selector is not None and same_namespace and selector_matches(selector, meta.get("labels") or {}):
                result.setdefault(pod_key(pod), pod_key(pdb))
    return result
