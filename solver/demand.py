"""Pending pods as demand: what each asks for (in resource keys), where it may run, and what serving it is worth.

A resource key names a kind of MIG device a pod can consume:
- mixed strategy: the profile name (`1g.10gb`); any GPU model with a profile of that name serves it, as the
  device plugin advertises `nvidia.com/mig-1g.10gb` for all of them;
- single strategy: `single:<model>:<profile>`, a device on a node whose GPUs are all that profile, reached
  through a `nvidia.com/gpu.product=<product>-MIG-<profile>` node selector.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from solver.memo import memo
from solver.profiles import parse_profile
from solver.snapshot import (
    GPU_RESOURCE,
    PRODUCT_LABEL,
    ClusterSnapshot,
    NodeSelectorRequirement,
    NodeState,
    PendingPod,
    Taint,
    Toleration,
    split_single_product,
)


def single_key(model_key: str, profile: str) -> str:
    return f"single:{model_key}:{profile}"


@lru_cache(maxsize=4096)
def key_compute_slices(key: str) -> int:
    """Compute slices of one device of this resource key (what a served device is worth, before priority)."""
    return parse_profile(key.rsplit(":", 1)[-1]).gpu_slices


@dataclass(frozen=True)
class Demand:
    """One pending pod, normalised for planning. A plain dataclass: it is made from a validated pod and facts read
    from it, once per pending pod and plan (50,000 at 10,000 nodes), where a model validated each again."""

    pod: PendingPod
    kind: str  # "mixed" or "single"
    resources: tuple[tuple[str, int], ...]
    weight: int

    @memo
    def devices(self) -> int:
        return sum(c for _, c in self.resources)

    @memo
    def eligibility_key(self) -> tuple[object, ...]:
        """Everything that decides which nodes may run the pod: its filters, and its request when that narrows the
        nodes further (single-strategy products; several devices, which must all be on one node)."""
        pod = self.pod
        selector, affinity, tolerations = pod.node_selector, pod.node_affinity, pod.tolerations
        # every field of the terms and tolerations, as plain tuples (hashable, and cheaper than JSON text); most
        # pods have none of the three, so those are not built at all
        return (
            self.kind,
            self.resources if self.kind == "single" or self.devices > 1 else (),
            tuple(sorted((k, v) for k, v in selector.items() if not self._is_product_key(k))) if selector else (),
            tuple(tuple((r.key, r.operator, tuple(r.values)) for r in t.match_expressions) for t in affinity)
            if affinity
            else (),
            tuple(sorted((t.key, t.operator, t.value, t.effect) for t in tolerations)) if tolerations else (),
        )

    def _is_product_key(self, key: str) -> bool:
        return self.kind == "single" and key == PRODUCT_LABEL


class PriorityWeights:
    """Priorities → weights: 1 + the rank of the priority among all distinct priorities in the snapshot.

    Ranks keep weights small and bounded whatever the raw values (Kubernetes priorities reach 2e9), while a
    higher priority is always worth more.
    """

    def __init__(self, priorities: Iterable[int]) -> None:
        self._rank = {p: i for i, p in enumerate(sorted(set(priorities)))}

    def factor(self, priority: int) -> int:
        return 1 + self._rank.get(priority, 0)


def weights_for(snapshot: ClusterSnapshot) -> PriorityWeights:
    return PriorityWeights([p.priority for p in snapshot.pods] + [p.priority for p in snapshot.running])


def demands(snapshot: ClusterSnapshot, weights: PriorityWeights) -> list[Demand]:
    """Every pending pod as a `Demand`, in name order."""
    result = []
    requests: dict[tuple[object, ...], tuple[str, tuple[tuple[str, int], ...], int]] = {}
    for pod in sorted(snapshot.pods, key=lambda p: p.name):
        # pods repeat a few requests: each is read once (what it reads: the requests and the product selector)
        asked = (tuple(pod.requests.items()), pod.node_selector.get(PRODUCT_LABEL))
        if asked not in requests:
            requests[asked] = _request(pod)
        kind, resources, slices = requests[asked]
        result.append(Demand(pod=pod, kind=kind, resources=resources, weight=slices * weights.factor(pod.priority)))
    return result


def _request(pod: PendingPod) -> tuple[str, tuple[tuple[str, int], ...], int]:
    """The pod's strategy, its request as resource keys, and the compute slices it asks for."""
    product = pod.single_product
    if product is not None:
        model, profile = split_single_product(product)
        resources: tuple[tuple[str, int], ...] = ((single_key(model.key, profile), pod.requests[GPU_RESOURCE]),)
        kind = "single"
    else:
        resources = tuple(sorted(pod.mig_requests.items()))
        kind = "mixed"
    return kind, resources, sum(key_compute_slices(k) * c for k, c in resources)


def requirement_holds(req: NodeSelectorRequirement, labels: dict[str, str]) -> bool:
    value = labels.get(req.key)
    if req.operator == "In":
        return value is not None and value in req.values
    if req.operator == "NotIn":
        return value is None or value not in req.values
    if req.operator == "Exists":
        return value is not None
    if req.operator == "DoesNotExist":
        return value is None
    try:  # Gt / Lt compare integers; a non-integer label never matches
        label, bound = int(value or ""), int(req.values[0])
    except (ValueError, IndexError):
        return False
    return label > bound if req.operator == "Gt" else label < bound


def _tolerates(taint: Taint, tolerations: Iterable[Toleration]) -> bool:
    for tol in tolerations:
        if tol.effect and tol.effect != taint.effect:
            continue
        if tol.operator == "Exists" and (not tol.key or tol.key == taint.key):
            return True
        if tol.operator == "Equal" and tol.key == taint.key and tol.value == taint.value:
            return True
    return False


def rejection(node: NodeState, demand: Demand) -> str | None:
    """Why the node may not run the pod (selector, affinity, taint, cordon, strategy), or None when it may."""
    pod = demand.pod
    if node.unschedulable:
        return "cordoned"
    if node.strategy != demand.kind:
        return "strategy"
    for key, value in pod.node_selector.items():
        if demand._is_product_key(key):
            continue
        if node.labels.get(key) != value:
            return "selector"
    if pod.node_affinity and not any(
        all(requirement_holds(r, node.labels) for r in term.match_expressions) for term in pod.node_affinity
    ):
        return "affinity"
    for taint in node.taints:
        if taint.effect != "PreferNoSchedule" and not _tolerates(taint, pod.tolerations):
            return "taint"
    return None
