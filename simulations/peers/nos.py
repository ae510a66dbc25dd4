"""nos's MIG partitioner (nebuly-ai/nos @ 12e0a7289f5b, its last commit), beside the twin's own scheduler.

Not migopt's `greedy` policy: `greedy` is migopt's real controller with its greedy planner, acting through
mig-manager with drains; this module is what nos does, from spec dynamic-mig-peers §3 and §4:

- **Trigger**: a batch of unschedulable pods, closed after `batch_idle_s` (10 s) with no new one or
  `batch_timeout_s` (60 s) after it opened. A batch opens when a pod is left pending, when a pod ends while
  others wait (kube-scheduler retries them; their new status reaches nos), and when the nodes of a plan that
  changed a layout have all reported with pods still pending (a plan that changed nothing makes no event). No
  plan is made while a node has not reported the previous one: the partitioner looks again after
  `report_interval_s`. The shortfall and the fitting (below) count every pending pod, the batch's and older ones.
- **Plan** (one greedy pass, no backtracking): the cluster-wide shortfall per profile (pending pods' requests less
  free devices); candidate nodes, those with a GPU not fully used, in name order; on each, GPU by GPU in index
  order, the allowed geometry that provides the most still-missing profiles as free devices while keeping every
  used device (by count, as nos tracks them), if it provides more than the GPU's current one (ties: the current
  one, then the first in the list). Allowed geometries stand in for nos's `known_configs.go`: every maximal map
  of the model's plain profiles. The pending pods (priority descending, then smaller profile first) are then
  fitted to the node's free devices, Kubernetes' filters applied; the node's change is kept if one fits,
  undone otherwise, and what the fitted pods asked for is no longer missing.
- **Actuation**: the node's agent, `apply_s` (5 s, a guess) later, deletes the free devices the plan does not
  keep and creates the missing ones where NVML places them (`simulations.placement.auto_place`); when they do not
  all fit it deletes every free device and tries up to 20 creation orders, if one ends nearer the target.
  Used devices are never touched, so a plan may be applied only in part. After any change it deletes the device
  plugin's pod, whose devices come back `plugin_restart_s` (15 s, a guess) later; no drain, no mig-manager, no
  operand pause. It reports at its next 10 s status tick.
- **Pods that cannot fit** stay Pending and are reconsidered by later batches. Nothing is evicted.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache, partial
from itertools import islice

from simulations.peers.knobs import NosKnobs
from simulations.peers.sizing import plain_profiles
from simulations.placement import auto_place, creation_order, distinct_permutations
from simulations.twin.clock import EventHandle
from simulations.twin.cluster import Twin
from simulations.twin.scheduler import filter_view
from simulations.twin.state import TwinGpu, TwinNode, TwinPod
from solver.catalog import GpuModel
from solver.demand import Demand, rejection
from solver.geometry import Instance, maximal_maps
from solver.profiles import MIG_RESOURCE_PREFIX, parse_profile, profile_from_resource

ORDERINGS_TRIED = 20
"""The agent tries about 20 creation orders (`internal/controllers/migagent/actuator.go`)."""

Geometry = tuple[tuple[str, int], ...]
Targets = dict[int, Counter[str]]


@cache
def allowed_geometries(model: GpuModel) -> tuple[Counter[str], ...]:
    return tuple(Counter(m) for m in maximal_maps(model, [p.name for p in plain_profiles(model)]))


@cache
def _keeping(model: GpuModel, used: Geometry) -> tuple[Counter[str], ...]:
    """The allowed geometries that still hold every used device."""
    return tuple(g for g in allowed_geometries(model) if all(g[p] >= n for p, n in used))


def _provided(free: Counter[str], missing: Counter[str]) -> int:
    return sum(min(count, free[profile]) for profile, count in missing.items())


def best_geometry(
    model: GpuModel, used: Counter[str], current: Counter[str], missing: Counter[str]
) -> Counter[str] | None:
    """`UpdateGeometryFor`: the geometry whose free devices provide the most missing profiles, when that is more
    than the current layout provides; None to leave the GPU as it is."""
    return _best(model, _key(used), _key(current), _key(missing))


def _key(counts: Counter[str]) -> Geometry:
    return tuple(sorted((p, n) for p, n in counts.items() if n > 0))


@lru_cache(maxsize=1 << 16)
def _best(model: GpuModel, used_key: Geometry, current_key: Geometry, missing_key: Geometry) -> Counter[str] | None:
    """`best_geometry` on hashable counts: a cluster repeats a few GPU states and shortfalls many times."""
    used, missing = Counter(dict(used_key)), Counter(dict(missing_key))
    best, best_score = None, _provided(Counter(dict(current_key)) - used, missing)
    for geometry in _keeping(model, used_key):
        score = _provided(geometry - used, missing)
        if score > best_score:
            best, best_score = geometry, score
    return best


def pod_needs(pod: TwinPod) -> Counter[str] | None:
    """The profiles a mixed-strategy pod asks for; None for any other request (nos plans MIG resources only)."""
    needs: Counter[str] = Counter()
    for resource, count in pod.spec.requests.items():
        if not resource.startswith(MIG_RESOURCE_PREFIX):
            return None
        needs[profile_from_resource(resource)] += count
    return needs


def _smaller_first(pod: TwinPod, needs: Counter[str]) -> tuple[int, int, int]:
    largest = max(parse_profile(p).gpu_slices * 1000 + parse_profile(p).memory_gb for p in needs)
    return (-pod.spec.priority, largest, pod.arrival)


@dataclass(frozen=True)
class GpuCounts:
    """One MIG GPU as nos's planner counts it: devices in use, all devices, and whether a geometry could add one."""

    gpu: TwinGpu
    used: Counter[str]
    current: Counter[str]
    spare: bool

    @classmethod
    def of(cls, gpu: TwinGpu) -> GpuCounts:
        model = gpu.gpu_model
        used = Counter(i.profile for i in gpu.instances if i.pod is not None)
        compute = sum(model.profile(p).compute_slices * n for p, n in used.items())
        return cls(gpu, used, Counter(i.profile for i in gpu.instances), compute < model.compute_slices)

    @property
    def free(self) -> Counter[str]:
        return self.current - self.used


class NodeCounts:
    """A node's `GpuCounts`, recounted only when its layout or holders may have changed (`TwinNode.layout_mark`)."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[object, list[GpuCounts], Counter[str]]] = {}

    def __call__(self, node: TwinNode) -> tuple[list[GpuCounts], Counter[str]]:
        """The node's MIG GPUs by index, and its free devices."""
        mark = node.layout_mark()
        known = self._known.get(node.name)
        if known is None or known[0] != mark:
            node.watch()
            gpus = [GpuCounts.of(g) for g in sorted(node.gpus, key=lambda g: g.index) if g.mig_enabled]
            free: Counter[str] = Counter()
            for counts in gpus:
                free += counts.free
            known = self._known[node.name] = (node.layout_mark(), gpus, free)
        return known[1], known[2]


def plan(
    nodes: Mapping[str, TwinNode],
    pending: Iterable[TwinPod],
    demand_of: Callable[[TwinPod], Demand],
    counts: NodeCounts | None = None,
) -> dict[str, Targets]:
    """nos's planner over the twin's nodes: per node kept, the target geometry of each GPU it changes. `counts`
    keeps nodes' counts between plans."""
    counted = counts or NodeCounts()
    wanted = sorted(
        ((pod, needs) for pod in pending if (needs := pod_needs(pod))),
        key=lambda item: _smaller_first(*item),
    )
    requested: Counter[str] = Counter()
    for _, needs in wanted:
        requested += needs
    free_total: Counter[str] = Counter()
    for node in nodes.values():
        free_total += counted(node)[1]
    placed: set[str] = set()
    changes: dict[str, Targets] = {}
    for name in sorted(nodes):
        missing = requested - free_total
        if not missing:
            break
        node = nodes[name]
        gpus, free_before = counted(node)
        if not any(g.spare for g in gpus):
            continue
        targets: Targets = {}
        node_free: Counter[str] = Counter()
        for gpu in gpus:
            target = best_geometry(gpu.gpu.gpu_model, gpu.used, gpu.current, missing) if missing and gpu.spare else None
            if target is None:
                node_free += gpu.free
                continue
            targets[gpu.gpu.index] = target
            free_after = target - gpu.used
            missing -= free_after - gpu.free  # what it adds; what it had is already in the cluster's free devices
            node_free += free_after
        if not targets:
            continue
        fitted = []
        view = filter_view(node)
        for pod, needs in wanted:
            if pod.name in placed or rejection(view, demand_of(pod)) is not None:
                continue
            if all(node_free[p] >= n for p, n in needs.items()):
                node_free -= needs
                fitted.append((pod, needs))
        if not fitted:
            continue
        changes[name] = targets
        for pod, needs in fitted:
            placed.add(pod.name)
            requested -= needs
        free_total = free_total - free_before + node_free
    return changes


def _reached(free: Iterable[Instance], wanted: Counter[str]) -> int:
    """How many of the wanted devices a GPU's free devices make up."""
    return _provided(Counter(i.profile for i in free), wanted)


def creations(model: GpuModel, kept: list[Instance], wanted: Counter[str]) -> list[Instance]:
    """Where NVML puts `wanted` next to `kept`, in the first of up to 20 creation orders that creates them all, or
    else the one that creates most."""
    best: list[Instance] = []
    for order in islice(distinct_permutations(creation_order(model, dict(wanted))), ORDERINGS_TRIED):
        layout, made = list(kept), []
        for profile in order:
            start = auto_place(model, layout, profile.name)
            if start is not None:
                made.append(Instance(profile=profile.name, start=start))
                layout.append(made[-1])
        if len(made) > len(best):
            best = made
        if len(made) == len(order):
            break
    return best


class Nos:
    """nos's partitioner and MIG agents on one twin."""

    def __init__(self, twin: Twin, knobs: NosKnobs) -> None:
        self.twin = twin
        self.knobs = knobs
        self.plans = 0
        self.reconfigurations = 0
        self._changed = False  # the last plan's agents changed a layout (the cluster saw events)
        self._opened: float | None = None
        self._idle: EventHandle | None = None
        self._cap: EventHandle | None = None
        self._retry: EventHandle | None = None
        self.unreported: set[str] = set()
        self._counts = NodeCounts()
        self._seen_pending = twin.pending_count()
        self._seen_releases = twin.releases
        twin.clock.add_listener(self._observe)

    @property
    def batch_open(self) -> bool:
        return self._opened is not None

    def _observe(self) -> None:
        """After every event: a pod left pending, or one that ended while others wait, goes to the batcher."""
        pending, releases = self.twin.pending_count(), self.twin.releases
        grew = pending > self._seen_pending
        freed = releases != self._seen_releases and pending > 0
        self._seen_pending, self._seen_releases = pending, releases
        if grew or freed:
            self._add()

    def _add(self) -> None:
        clock = self.twin.clock
        if self._opened is None:
            self._opened = clock.now
            self._cap = clock.call_in(self.knobs.batch_timeout_s, self._close)
        if self._idle is not None:
            self._idle.cancel()
        self._idle = clock.call_in(self.knobs.batch_idle_s, self._close)

    def _close(self) -> None:
        for handle in (self._idle, self._cap):
            if handle is not None:
                handle.cancel()
        self._opened = self._idle = self._cap = None
        self._plan()

    def _plan(self) -> None:
        self._retry = None
        if self.unreported:  # requeued: nothing is planned while a node has not reported the last plan
            self._retry = self.twin.clock.call_in(self.knobs.report_interval_s, self._plan)
            return
        pending = self.twin.pending_pods()
        if not pending:
            return
        self.plans += 1
        self._changed = False
        for node, targets in plan(self.twin.nodes, pending, self.twin.demand, self._counts).items():
            self.unreported.add(node)
            self.twin.clock.call_in(self.knobs.apply_s, partial(self._apply, node, targets))

    def _apply(self, name: str, targets: Targets) -> None:
        """The node's MIG agent: free devices deleted and created towards the targets, then the plugin restarted."""
        changed = False
        for index, target in sorted(targets.items()):
            changed |= self._apply_gpu(name, self.twin.node(name).gpu(index), target)
        ready = self.twin.now()
        if changed:
            self._changed = True
            self.reconfigurations += 1
            self.twin.restart_device_plugin(name, self.knobs.plugin_restart_s)
            ready += self.knobs.plugin_restart_s
        interval = self.knobs.report_interval_s
        report = max(math.ceil(ready / interval) * interval, ready)
        self.twin.clock.schedule(report, lambda: self._reported(name))

    def _apply_gpu(self, node: str, gpu: TwinGpu, target: Counter[str]) -> bool:
        """The agent's plan for one GPU: delete the free devices the target does not keep, create the missing ones;
        if they do not all fit, also delete the kept free devices and create everything again in up to 20 orders,
        when that ends with more of the target than the first way. True when a device was deleted or created."""
        model = gpu.gpu_model
        held = [Instance(profile=i.profile, start=i.start) for i in gpu.instances if i.pod is not None]
        free = sorted((i for i in gpu.instances if i.pod is None), key=lambda i: i.start)
        wanted = target - Counter(i.profile for i in held)
        if Counter(i.profile for i in free) == wanted:
            return False
        surplus = Counter(i.profile for i in free) - wanted
        drop = []
        for instance in free:  # which of several alike free devices goes is not known: the lowest starts
            if surplus[instance.profile] > 0:
                surplus[instance.profile] -= 1
                drop.append(instance)
        stay = [Instance(profile=i.profile, start=i.start) for i in free if all(i is not d for d in drop)]
        made = creations(model, [*held, *stay], wanted - Counter(i.profile for i in stay))
        if len(made) < sum((wanted - Counter(i.profile for i in stay)).values()):
            again = creations(model, held, wanted)
            if _reached(again, wanted) > _reached([*stay, *made], wanted):
                drop, made = free, again
        for gone in drop:
            self.twin.destroy_instance(node, gpu.index, gone.start)
        for new in made:
            self.twin.create_instance(node, gpu.index, new.profile, new.start)
        return bool(drop or made)

    def _reported(self, node: str) -> None:
        """The node's status is in. Once all are, pods still pending after a plan that changed something are
        batched again (the restarted plugins' new devices send them back through the scheduler); after a plan that
        changed nothing, only a new pod or an ended one opens the next batch."""
        self.unreported.discard(node)
        if not self.unreported and self._changed and self.twin.pending_count() > 0 and self._retry is None:
            self._add()


def attach(twin: Twin, knobs: NosKnobs) -> Nos:
    """nos watching the twin's pending pods from now on (the twin's own scheduler keeps binding them)."""
    return Nos(twin, knobs)
