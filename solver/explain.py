"""Why a pending pod is not placed by a plan, in words a person can act on.

Reasons are checked from the most structural (no such GPU anywhere) to the most circumstantial (others got the
capacity first), and cached per (request, eligibility, priority) so a large cluster is walked once per kind of
pod, not once per pod.
"""

from __future__ import annotations

from collections import Counter

from solver.catalog import load_catalog
from solver.demand import Demand, rejection
from solver.plan import PlanPolicy
from solver.protection import Protection
from solver.snapshot import MAX_DEVICES_PER_REQUEST, ClusterSnapshot, GpuState, NodeState, RunningPod

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


def _most_devices(node: NodeState, key: str) -> int:
    """The most devices of resource key `key` the node could ever offer, every GPU split for it alone."""
    profile = key.rsplit(":", 1)[-1]
    model_key = key.split(":")[1] if key.startswith("single:") else None
    return sum(
        g.gpu_model.profile(profile).max_count
        for g in node.gpus
        if g.gpu_model.has_profile(profile) and model_key in (None, g.gpu_model.key)
    )


def _too_many(wanted: str, demand: Demand, capable: list[NodeState]) -> str:
    """A request no node could ever hold, however its GPUs were split (a pod's devices are all on one node)."""
    reason = f"asks for {wanted} on one node: more than any node in the cluster can hold"
    if len(demand.resources) == 1:
        key = demand.resources[0][0]
        reason += f" (at most {max(_most_devices(n, key) for n in capable)})"
    if any(c >= MAX_DEVICES_PER_REQUEST for _, c in demand.resources):
        reason += f"; counts above {MAX_DEVICES_PER_REQUEST} are read as {MAX_DEVICES_PER_REQUEST}"
    return reason


class Explainer:
    def __init__(self, snapshot: ClusterSnapshot, policy: PlanPolicy, evicted: int, reconfigured: int) -> None:
        self.snapshot = snapshot
        self.policy = policy
        self.evicted = evicted
        self.reconfigured = reconfigured
        self._cache: dict[tuple[object, ...], str] = {}
        self._offers: dict[str, set[str]] = {}
        self._capable_nodes: dict[tuple[tuple[str, int], ...], list[NodeState]] = {}

    def reason(self, demand: Demand) -> str:
        key = (demand.eligibility_key, demand.resources, demand.pod.priority)
        if key not in self._cache:
            self._cache[key] = self._reason(demand)
        return self._cache[key]

    def _capable(self, node: NodeState, gpu: GpuState, demand: Demand) -> bool:
        model = gpu.gpu_model
        if demand.kind == "single":
            return all(k.split(":")[1] == model.key for k, _ in demand.resources)
        return any(model.has_profile(k) for k, _ in demand.resources)

    def _node_capable(self, node: NodeState, demand: Demand) -> bool:
        """Some GPU of the node offers each requested profile (all of a pod's devices must be on one node)."""
        if node.name not in self._offers:
            self._offers[node.name] = {p for g in node.gpus for p in g.gpu_model.profile_names} | {
                f"single:{g.gpu_model.key}:{p}" for g in node.gpus for p in g.gpu_model.profile_names
            }
        return all(k in self._offers[node.name] for k, _ in demand.resources)

    def _protection(self, holders: list[RunningPod]) -> str:
        """What keeps a GPU: its holders' first reason in `Protection` order, else the policy's priority floor."""
        reasons = {p.protection for p in holders if p.protection is not None}
        first = next((r for r in Protection if r in reasons), None)
        return first.value if first is not None else _PRIORITY_PROTECTED

    def _reason(self, demand: Demand) -> str:
        wanted = ", ".join(f"{c}x {k.rsplit(':', 1)[-1]}" for k, c in demand.resources)
        if demand.resources not in self._capable_nodes:
            self._capable_nodes[demand.resources] = [n for n in self.snapshot.nodes if self._node_capable(n, demand)]
        capable = self._capable_nodes[demand.resources]
        if not capable:
            profiles = [k.rsplit(":", 1)[-1] for k, _ in demand.resources]
            if len(profiles) > 1:
                return f"no node has GPUs offering all of {wanted}; a pod's devices must all be on one node"
            models = [m.key for m in load_catalog().models if any(m.has_profile(p) for p in profiles)]
            return f"no GPU in the cluster offers {wanted} (GPU models with it: {', '.join(models)})"
        if not any(all(c <= _most_devices(n, k) for k, c in demand.resources) for n in capable):
            return _too_many(wanted, demand, capable)
        verdicts = {n.name: rejection(n, demand) for n in capable}
        eligible = [n for n in capable if verdicts[n.name] is None]
        if not eligible:
            counts = Counter(v for v in verdicts.values() if v)
            parts = [f"{c} {_FILTER_WORDS[v]}" for v, c in counts.most_common()]
            return f"no node with GPUs offering {wanted} accepts the pod: " + ", ".join(parts)
        gpus = [g for n in eligible for g in n.gpus if self._capable(n, g, demand)]
        names = {k.rsplit(":", 1)[-1] for k, _ in demand.resources}
        free = [g for g in gpus if any(not i.pod and g.gpu_model.profile(i.profile).name in names for i in g.instances)]
        behind_priority = behind_protected = reconfigurable = 0
        protections: Counter[str] = Counter()
        for gpu in gpus:
            if gpu in free:
                continue
            holders = [self.snapshot.running_pod(p) for p in gpu.holders]
            if not all(self.policy.may_evict(p) for p in holders):
                behind_protected += 1
                protections[self._protection(holders)] += 1
            elif any(p.priority >= demand.pod.priority for p in holders):
                behind_priority += 1
            else:
                reconfigurable += 1
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
        return (
            f"the free or freeable capacity for {wanted} on {len(gpus)} eligible GPUs ({len(eligible)} nodes) "
            f"went to pending pods of higher weight, or may be freed only by evicting pods of equal or "
            f"higher priority ({behind_priority} GPUs)"
        )
