"""HAMi's dynamic MIG (v2.10.0, "reservation-first"), as a scheduler of the twin.

Modelled from Project-HAMi/HAMi @ 4707fb02c91c (spec dynamic-mig-peers §2, §4):

- **Trigger**: each pod, when its turn in the queue comes. Its sized request is HAMi's `nvidia.com/gpu: n` with
  `nvidia.com/gpumem` (the profile's MiB) and `nvidia.com/gpucores` (its share of the GPU's compute).
- **Node**: exactly one, the best score among the nodes where the pod fits (`binpack`, the default: highest
  usage first; `spread`: lowest). Score = Σ over the node's GPUs of used/Count + cores/100 + mem/totalmem, with
  Count the most instances any allowed profile may have on the GPU. Equal scores go to the first node by name
  (the source sorts scores; its tie order is not stated).
- **GPU**: in order of the same per-GPU usage, least used first (`spread`, the default) or most used first
  (`binpack`), lowest index on ties; a pod asking for several devices tries the GPU of its previous device first.
- **Profile**: among the allowed profiles (`peers.hami.allowlist`; default the chart's pattern, see
  `sizing.hami_chart_allowlist`), the one with least memory ≥ the request, fewer slices on ties, that still has a
  free placement. Modelling choice: the profile must also have at least the requested compute slices (HAMi is
  documented to match on memory; without the compute floor a 4g pod would get a 3g slice of the same memory,
  and the demand would no longer be the same as the other policies').
- **Placement**: `1g` and `3g` profiles take the highest free start, the others the lowest (`orderedMigPlacements`).
- **Latency and disruption**: the node's lock is held from Bind until Allocate has created the instance
  (`peers.hami.allocate_s`, a guess: 2 s), so a node creates one instance at a time; nothing else is touched.
  When the pod ends its slots are free to the scheduler at once (usage comes from live pods' annotations) and its
  instance is destroyed by the plugin's reconciler, every `reclaim_interval_s` (5 s, sourced), or before the
  node's next Allocate, whichever is first.
- **Pods that fit nowhere** stay Pending (`CardMigTopologyInfeasible`), with no repacking; they are tried again
  whenever capacity frees.
"""

from __future__ import annotations

import math

from simulations.peers.knobs import HamiKnobs
from simulations.peers.per_pod import Choice, GpuView, Grant, NodeView, PerPodScheduler, Slot, fit_on
from simulations.peers.sizing import covers, hami_chart_allowlist
from simulations.twin.cluster import Twin
from simulations.twin.occupancy import Occupancy
from simulations.twin.state import SizedRequest
from solver.catalog import GpuModel, Profile
from solver.profiles import parse_profile


def placement_order(profile: Profile) -> tuple[int, ...]:
    """`orderedMigPlacements`: 1g and 3g profiles from the highest start down, the others from the lowest up."""
    highest_first = parse_profile(profile.name).gpu_slices in (1, 3)
    return tuple(sorted(profile.starts, reverse=highest_first))


class Hami(PerPodScheduler):
    def __init__(self, twin: Twin, knobs: HamiKnobs) -> None:
        self.knobs = knobs
        self._reclaims: set[str] = set()
        self._allowed_profiles: dict[str, tuple[Profile, ...]] = {}
        self._candidates: dict[tuple[str, SizedRequest], tuple[tuple[Profile, tuple[int, ...]], ...]] = {}
        super().__init__(twin, knobs.allocate_s)

    def allowlist(self, model: GpuModel) -> tuple[Profile, ...]:
        found = self._allowed_profiles.get(model.key)
        if found is None:
            named = self.knobs.allowlist.get(model.key)
            found = tuple(model.profile(p) for p in named) if named is not None else hami_chart_allowlist(model)
            self._allowed_profiles[model.key] = found
        return found

    def candidates(self, model: GpuModel, request: SizedRequest) -> tuple[tuple[Profile, tuple[int, ...]], ...]:
        """The profiles that may serve the request, least memory then fewest slices first, with their starts in
        HAMi's order."""
        key = (model.key, request)
        found = self._candidates.get(key)
        if found is None:
            covering = sorted(
                (p for p in self.allowlist(model) if covers(p, request)),
                key=lambda p: (p.memory_mib, p.compute_slices, p.memory_slices),
            )
            found = self._candidates[key] = tuple((p, placement_order(p)) for p in covering)
        return found

    def _count(self, model: GpuModel) -> int:
        return max((p.max_count for p in self.allowlist(model)), default=1)

    def _usage(self, gpu: GpuView, instances: int, compute: int, memory: int) -> float:
        model = gpu.model
        full_memory = max(p.memory_mib for p in model.profiles)
        return instances / self._count(model) + compute / model.compute_slices + memory / full_memory

    def node_score(self, node: NodeView) -> float:
        return sum(self._usage(g, g.instances, g.taken.compute, g.memory_mib) for g in node.gpus)

    def choose(self, sized: tuple[SizedRequest, ...], nodes: list[NodeView]) -> Choice | None:
        best: Choice | None = None
        best_score = 0.0
        sign = 1.0 if self.knobs.node_policy == "binpack" else -1.0
        for node in nodes:
            slots = fit_on(node, sized, self.fit)
            if slots is None:
                continue
            if node.score is None:
                node.score = self.node_score(node)
            score = sign * node.score
            if best is None or score > best_score:
                best, best_score = (node, slots), score
        return best

    def fit(self, node: NodeView, sized: tuple[SizedRequest, ...]) -> tuple[Slot, ...] | None:
        """Where HAMi would put each of the pod's devices on this node, or None when one does not fit."""
        taken = {g.index: g.taken for g in node.gpus}
        usage = {g.index: (g.instances, g.taken.compute, g.memory_mib) for g in node.gpus}
        slots: list[Slot] = []
        descending = self.knobs.gpu_policy == "binpack"
        for request in sized:
            for _ in range(request.count):
                order = sorted(
                    node.gpus,
                    key=lambda g: ((-1 if descending else 1) * self._usage(g, *usage[g.index]), g.index),
                )
                if slots:  # a container asking for several keeps revisiting the GPU of its last device first
                    last = next(g for g in order if g.index == slots[-1].gpu)
                    order = [last, *(g for g in order if g is not last)]
                for gpu in order:
                    found = self._on_gpu(gpu.model, taken[gpu.index], request)
                    if found is None:
                        continue
                    profile, start = found
                    taken[gpu.index] = taken[gpu.index].plus(profile, start)
                    used = usage[gpu.index]
                    usage[gpu.index] = (used[0] + 1, used[1] + profile.compute_slices, used[2] + profile.memory_mib)
                    slots.append(Slot(gpu.index, profile, start))
                    break
                else:
                    return None
        return tuple(slots)

    def _on_gpu(self, model: GpuModel, taken: Occupancy, request: SizedRequest) -> tuple[Profile, int] | None:
        """`selectMigCandidate` then `selectMigPlacement`: the smallest covering profile with a free placement."""
        for profile, starts in self.candidates(model, request):
            for start in starts:
                if taken.admits(model, profile, start):
                    return profile, start
        return None

    def released(self, grant: Grant) -> None:
        """Usage drops with the pod; the instance waits for the reconciler's next round (or the next Allocate)."""
        self.free(grant)
        if grant.node in self._reclaims:
            return
        self._reclaims.add(grant.node)
        interval = self.knobs.reclaim_interval_s
        now = self.twin.now()
        due = (math.floor(now / interval) + 1) * interval
        self.twin.clock.schedule(due, lambda: self._reclaim(grant.node))

    def _reclaim(self, node: str) -> None:
        self._reclaims.discard(node)
        self.destroy_free(node)


def attach(twin: Twin, knobs: HamiKnobs) -> Hami:
    """HAMi in charge of the twin's MIG pods from now on."""
    hami = Hami(twin, knobs)
    twin.use_scheduler(hami)
    return hami
