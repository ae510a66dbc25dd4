"""Why a pending pod is not placed by a plan, in words a person can act on.

Reasons are checked from the most structural (no such GPU anywhere) to the most circumstantial (others got the
capacity first), and cached per (request, eligibility, priority). The cluster is read once, into a census:
nodes counted by what the reasons read of them (filters, GPU models), GPUs counted by their node's class and
what the reasons read of a GPU (model, free profiles, what its holders allow). A reason then walks the census's
classes, whose number does not grow with the cluster, instead of its nodes and GPUs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from solver.catalog import GpuModel, load_catalog
from solver.demand import Demand, rejection
from solver.plan import PlanPolicy
from solver.protection import Protection
from solver.snapshot import MAX_DEVICES_PER_REQUEST, ClusterSnapshot, NodeState, RunningPod

_FILTER_WORDS = {
    "selector": "fail its node selector",
    "affinity": "fail its required node affinity",
    "taint": "have taints it does not tolerate",
    "cordoned": "are cordoned",
    "strategy": "use another MIG strategy",
}


_PRIORITY_PROTECTED = "protect-priority"  # holders evictable, but at or above the policy's `protect_priority`
_ORDER = {**{p.value: i for i, p in enumerate(Protection)}, _PRIORITY_PROTECTED: len(Protection)}


def _breakdown(protections: Counter[str]) -> str:
    """`: pdb 2, daemonset 1`: GPUs per reason, most first (each GPU counted once, so the counts sum to the total);
    empty when no GPU is protected, so such reasons read as they always have."""
    if not protections:
        return ""
    ranked = sorted(protections.items(), key=lambda kv: (-kv[1], _ORDER[kv[0]]))
    return ": " + ", ".join(f"{reason} {count}" for reason, count in ranked)


def _protection(holders: list[RunningPod]) -> str:
    """What keeps a GPU: its holders' first reason in `Protection` order, else the policy's priority floor."""
    reasons = {p.protection for p in holders if p.protection is not None}
    first = next((r for r in Protection if r in reasons), None)
    return first.value if first is not None else _PRIORITY_PROTECTED


@dataclass
class _NodeClass:
    """Nodes alike for every reason: the same filter shape and the same GPU models (in index order)."""

    node: NodeState  # the first such node, which `rejection` is asked about
    models: tuple[GpuModel, ...]
    count: int = 0

    @property
    def offers(self) -> frozenset[str]:
        """Every resource key some GPU of the node has a profile for, under either strategy."""
        return frozenset(p for m in self.models for p in m.profile_names) | frozenset(
            f"single:{m.key}:{p}" for m in self.models for p in m.profile_names
        )

    def most_devices(self, key: str) -> int:
        """The most devices of resource key `key` the node could ever offer, every GPU split for it alone."""
        profile = key.rsplit(":", 1)[-1]
        model_key = key.split(":")[1] if key.startswith("single:") else None
        return sum(
            m.profile(profile).max_count for m in self.models if m.has_profile(profile) and model_key in (None, m.key)
        )


class _GpuClass(NamedTuple):
    """GPUs alike for every reason: their node's class, model, free profiles, and what their holders allow."""

    node_class: int
    model: str  # its key
    free: frozenset[str]  # catalog names of the free instances' profiles
    protection: str | None  # why a holder may not be evicted (None: every holder may be)
    top: int | None  # the highest holder priority (None: no holder)


@dataclass
class Census:
    """The cluster as the reasons read it, built once per snapshot, policy and pending pods."""

    nodes: list[_NodeClass] = field(default_factory=list)
    gpus: Counter[_GpuClass] = field(default_factory=Counter)
    models: dict[str, GpuModel] = field(default_factory=dict)


def census(
    snapshot: ClusterSnapshot,
    policy: PlanPolicy,
    pending: Iterable[Demand] | None = None,
    known: Mapping[str, tuple[bool, int, int]] | None = None,
) -> Census:
    """Count the snapshot's nodes and GPUs by class. With `pending` (the demands reasons will be asked for),
    labels none of them selects on are left out of a node's class, so more nodes share one. `known`: what the
    problem's aggregation read of running pods (`Problem.holder_facts`), read instead of each pod again."""
    known = known or {}
    keys: set[str] | None = None
    if pending is not None:
        keys = set()
        for demand in pending:
            keys |= demand.pod.node_selector.keys()
            keys |= {r.key for t in demand.pod.node_affinity for r in t.match_expressions}
    result = Census()
    classes: dict[tuple[object, ...], int] = {}
    unheld = (None, None)  # what the holders of a GPU nobody holds allow: anything
    frees: dict[tuple[tuple[str, int], ...], frozenset[str]] = {}  # free instances -> their profiles
    for node in snapshot.nodes:
        gpus = node.gpus
        labels = node.labels.items() if keys is None else ((k, v) for k, v in node.labels.items() if k in keys)
        shape = (
            tuple(sorted(labels)),
            tuple(node.taints),
            node.unschedulable,
            node.strategy,
            tuple(g.gpu_model.key for g in gpus),
            node.unmanaged is not None,
        )
        number = classes.get(shape)
        if number is None:
            number = classes[shape] = len(result.nodes)
            result.nodes.append(_NodeClass(node, tuple(g.gpu_model for g in gpus)))
            for model in result.nodes[number].models:
                result.models.setdefault(model.key, model)
        result.nodes[number].count += 1
        for gpu in gpus:
            holders = gpu.holders
            facts = _holder_facts(snapshot, policy, holders, known) if holders else unheld
            free_instances = gpu.free_instances
            free = frees.get(free_instances)
            if free is None:
                free = frees[free_instances] = frozenset(p for p, _ in free_instances)
            result.gpus[_GpuClass(number, gpu.gpu_model.key, free, *facts)] += 1
    return result


def _holder_facts(
    snapshot: ClusterSnapshot, policy: PlanPolicy, names: frozenset[str], known: Mapping[str, tuple[bool, int, int]]
) -> tuple[str | None, int | None]:
    """What keeps the GPU its holders hold (None: the policy may evict them all), and their top priority."""
    evictable, top = policy.may_evict_all(names, known, snapshot.running_pod)
    protection = None if evictable else _protection([snapshot.running_pod(p) for p in names])
    return protection, top


def _too_many(wanted: str, demand: Demand, capable: list[_NodeClass]) -> str:
    """A request no node could ever hold, however its GPUs were split (a pod's devices are all on one node)."""
    reason = f"asks for {wanted} on one node: more than any node in the cluster can hold"
    if len(demand.resources) == 1:
        key = demand.resources[0][0]
        reason += f" (at most {max(n.most_devices(key) for n in capable)})"
    if any(c >= MAX_DEVICES_PER_REQUEST for _, c in demand.resources):
        reason += f"; counts above {MAX_DEVICES_PER_REQUEST} are read as {MAX_DEVICES_PER_REQUEST}"
    return reason


def _capable(model: GpuModel, demand: Demand) -> bool:
    if demand.kind == "single":
        return all(k.split(":")[1] == model.key for k, _ in demand.resources)
    return any(model.has_profile(k) for k, _ in demand.resources)


class Explainer:
    """Reasons for the pods one plan leaves pending. `census` may be shared by the plans of one problem."""

    def __init__(
        self,
        snapshot: ClusterSnapshot,
        policy: PlanPolicy,
        evicted: int,
        reconfigured: int,
        census: Census | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.policy = policy
        self.evicted = evicted
        self.reconfigured = reconfigured
        self._census = census
        self._cache: dict[tuple[object, ...], str] = {}
        self._capable_nodes: dict[tuple[tuple[str, int], ...], list[int]] = {}
        self._offers: list[frozenset[str]] = []
        self._scope_targets: dict[tuple[str, frozenset[str]], bool] = {}

    @property
    def census(self) -> Census:
        if self._census is None:
            self._census = census(self.snapshot, self.policy)
        return self._census

    def reason(self, demand: Demand) -> str:
        key = (demand.eligibility_key, demand.resources, demand.pod.priority)
        if key not in self._cache:
            self._cache[key] = self._reason(demand)
        return self._cache[key]

    def _kept_by_scope(self, gpu: _GpuClass, names: set[str]) -> bool:
        """The GPU may not be changed into anything offering these profiles: its node is not migopt's to change,
        or its model's allowlist has no target with any of them."""
        if self.census.nodes[gpu.node_class].node.unmanaged is not None:
            return True
        model = self.census.models[gpu.model]
        if self.policy.scope.allowlist(model) is None:
            return False
        key = (gpu.model, frozenset(names))
        if key not in self._scope_targets:
            offered = [n for n in names if model.has_profile(n)]
            self._scope_targets[key] = bool(offered and self.policy.scope.target_maps(model, offered))
        return not self._scope_targets[key]

    def _capable_classes(self, demand: Demand) -> list[int]:
        """Node classes where some GPU offers each requested key (all of a pod's devices must be on one node)."""
        if demand.resources not in self._capable_nodes:
            if not self._offers:
                self._offers = [n.offers for n in self.census.nodes]
            self._capable_nodes[demand.resources] = [
                i for i, offers in enumerate(self._offers) if all(k in offers for k, _ in demand.resources)
            ]
        return self._capable_nodes[demand.resources]

    def _reason(self, demand: Demand) -> str:
        wanted = ", ".join(f"{c}x {k.rsplit(':', 1)[-1]}" for k, c in demand.resources)
        nodes = self.census.nodes
        capable = self._capable_classes(demand)
        if not capable:
            profiles = [k.rsplit(":", 1)[-1] for k, _ in demand.resources]
            if len(profiles) > 1:
                return f"no node has GPUs offering all of {wanted}; a pod's devices must all be on one node"
            models = [m.key for m in load_catalog().models if any(m.has_profile(p) for p in profiles)]
            return f"no GPU in the cluster offers {wanted} (GPU models with it: {', '.join(models)})"
        if not any(all(c <= nodes[n].most_devices(k) for k, c in demand.resources) for n in capable):
            return _too_many(wanted, demand, [nodes[n] for n in capable])
        verdicts = {n: rejection(nodes[n].node, demand) for n in capable}
        eligible = {n for n in capable if verdicts[n] is None}
        if not eligible:
            counts: Counter[str] = Counter()
            for n in capable:  # first-seen order, as a node-by-node count would break ties
                counts[verdicts[n] or ""] += nodes[n].count
            parts = [f"{c} {_FILTER_WORDS[v]}" for v, c in counts.most_common()]
            return f"no node with GPUs offering {wanted} accepts the pod: " + ", ".join(parts)
        return self._gpu_reason(demand, wanted, eligible)

    def _gpu_reason(self, demand: Demand, wanted: str, eligible: set[int]) -> str:
        """The reason once some node accepts the pod: what its GPUs hold, then the caps, then the competition."""
        names = {k.rsplit(":", 1)[-1] for k, _ in demand.resources}
        gpus = free = behind_priority = behind_protected = kept_by_scope = reconfigurable = 0
        protections: Counter[str] = Counter()
        for gpu, count in self.census.gpus.items():
            if gpu.node_class not in eligible or not _capable(self.census.models[gpu.model], demand):
                continue
            gpus += count
            if gpu.free & names:
                free += count
            elif self._kept_by_scope(gpu, names):
                kept_by_scope += count
            elif gpu.protection is not None:
                behind_protected += count
                protections[gpu.protection] += count
            elif gpu.top is not None and gpu.top >= demand.pod.priority:
                behind_priority += count
            else:
                reconfigurable += count
        if not free and not reconfigurable and kept_by_scope:
            return (
                f"capacity for {wanted} exists only on GPUs migopt may not change ({kept_by_scope} GPUs outside "
                f"the managed nodes or their model's allowlist), behind evicting pods of equal or higher priority "
                f"({behind_priority} GPUs) or protected pods ({behind_protected} GPUs{_breakdown(protections)})"
            )
        if not free and not reconfigurable:
            return (
                f"capacity for {wanted} exists only behind evicting pods of equal or higher priority "
                f"({behind_priority} GPUs) or protected pods ({behind_protected} GPUs{_breakdown(protections)})"
            )
        caps = []
        if self.policy.max_evictions is not None and self.evicted >= self.policy.max_evictions:
            caps.append(f"eviction cap ({self.policy.max_evictions}) reached")
        if self.policy.max_reconfigurations is not None and self.reconfigured >= self.policy.max_reconfigurations:
            caps.append(f"reconfiguration cap ({self.policy.max_reconfigurations}) reached")
        if caps:
            return "; ".join(caps)
        if demand.devices > 1:
            return f"no eligible node has all of {wanted} free together after this plan"
        nodes = sum(self.census.nodes[n].count for n in eligible)
        return (
            f"the free or freeable capacity for {wanted} on {gpus} eligible GPUs ({nodes} nodes) "
            f"went to pending pods of higher weight, or may be freed only by evicting pods of equal or "
            f"higher priority ({behind_priority} GPUs)"
        )
