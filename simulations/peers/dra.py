"""NVIDIA's DRA driver with `DynamicMIG` (Alpha), as a scheduler of the twin.

Modelled from kubernetes-sigs/dra-driver-nvidia-gpu @ 95932046683719c4 and kube-scheduler's structured allocator
(spec dynamic-mig-peers §1, §4):

- **Trigger**: each pod, when its turn in the queue comes. Its sized request is one ResourceClaim of DeviceClass
  `mig.nvidia.com` with a capacity selector, `memory` ≥ the profile's MiB and `multiprocessors` ≥ its SMs (here:
  compute slices, which order a model's plain profiles the same way), for `count` devices.
- **Devices**: every (plain profile, placement) of a GPU is one device, named
  `gpu-<minor>-mig-<profile without dots>-<GI profile id>-<start>`; counters (memory slices, SMs) make overlapping
  devices and a full GPU exclude each other, and a profile never exceeds its NVML maximum.
- **Node**: no device scoring and no DRA node scorer: every node where the allocator finds devices scores the
  same, and kube-scheduler picks one of them at random (the twin's seeded generator, as its own scheduler does).
- **Device**: first fit (the allocator takes "the first full solution"): GPUs by PCI bus id (the GPU index),
  then devices by name, so profile name in string order, then start ascending; the first device that matches the
  selector and whose counters are free. Hence waste: on A100-40GB `1g10gb` sorts before `1g5gb`, so a claim for
  at least 1g.5gb takes a 1g.10gb when one is free. The order assumes Kubernetes ≥ 1.36 (slices sorted by
  name); before it the order across GPUs was arbitrary.
- **Latency and disruption**: the instance is created in NodePrepareResources when the pod starts and destroyed
  in NodeUnprepareResources when it ends, both behind one node-wide lock (`peers.dra.prepare_s`, 2 s, and
  `unprepare_s`, 1 s: guesses; the driver's comments call a GI destroy "O(1 s)"). The claim's devices are free to
  the scheduler again once unprepare is done. Nothing else is touched; no evictions, no defragmentation.
- **Not modelled**: MIG mode toggling on Hopper and newer (enabled with the first instance, disabled after the
  last): the default scenarios are A100, where it must be on beforehand; the allocation race of kubernetes#136269.
- **Pods that fit nowhere** stay Pending (Unschedulable) and are tried again when capacity frees; there is no
  DRA preemption.
"""

from __future__ import annotations

import random

from simulations.peers.knobs import DraKnobs
from simulations.peers.per_pod import Choice, Grant, NodeView, PerPodScheduler, Slot, fit_on
from simulations.peers.sizing import covers, plain_profiles
from simulations.twin.cluster import Twin
from simulations.twin.occupancy import Occupancy
from simulations.twin.state import SizedRequest
from solver.catalog import GpuModel, Profile


def device_name(gpu: int, profile: Profile, start: int) -> str:
    """The driver's canonical device name (`ToCanonicalName`)."""
    return f"gpu-{gpu}-mig-{profile.name.replace('.', '')}-{profile.id}-{start}"


def device_order(model: GpuModel) -> tuple[tuple[Profile, int], ...]:
    """A GPU's devices in the order the allocator walks them: by name (the GPU prefix is common to all)."""
    devices = [(p, s) for p in plain_profiles(model) for s in p.starts]
    return tuple(sorted(devices, key=lambda d: device_name(0, d[0], d[1])))


class Dra(PerPodScheduler):
    def __init__(self, twin: Twin, knobs: DraKnobs, rng: random.Random) -> None:
        self.knobs = knobs
        self._rng = rng
        self._matching: dict[tuple[str, SizedRequest], tuple[tuple[Profile, int], ...]] = {}
        super().__init__(twin, knobs.prepare_s)

    def matching(self, model: GpuModel, request: SizedRequest) -> tuple[tuple[Profile, int], ...]:
        """The GPU's devices the claim's selector accepts, in walking order."""
        key = (model.key, request)
        found = self._matching.get(key)
        if found is None:
            found = self._matching[key] = tuple(d for d in device_order(model) if covers(d[0], request))
        return found

    def choose(self, sized: tuple[SizedRequest, ...], nodes: list[NodeView]) -> Choice | None:
        feasible = [(node, slots) for node in nodes if (slots := fit_on(node, sized, self.fit)) is not None]
        if not feasible:
            return None
        return feasible[self._rng.randrange(len(feasible))] if len(feasible) > 1 else feasible[0]

    def fit(self, node: NodeView, sized: tuple[SizedRequest, ...]) -> tuple[Slot, ...] | None:
        """The first full solution: each requested device, in turn, the first free matching one."""
        taken = {g.index: g.taken for g in node.gpus}
        slots: list[Slot] = []
        for request in sized:
            for _ in range(request.count):
                found = self._first_free(node, taken, request)
                if found is None:
                    return None
                index, profile, start = found
                taken[index] = taken[index].plus(profile, start)
                slots.append(Slot(index, profile, start))
        return tuple(slots)

    def _first_free(
        self, node: NodeView, taken: dict[int, Occupancy], request: SizedRequest
    ) -> tuple[int, Profile, int] | None:
        for gpu in node.gpus:  # by index: PCI bus id order
            occupied = taken[gpu.index]
            for profile, start in self.matching(gpu.model, request):
                if occupied.admits(gpu.model, profile, start):
                    return gpu.index, profile, start
        return None

    def released(self, grant: Grant) -> None:
        """NodeUnprepareResources, in its turn on the node's lock: the instances go, then the devices are free."""

        def unprepared() -> None:
            self.destroy_free(grant.node, grant.slots)
            self.free(grant)

        self.nodes[grant.node].lock.submit(self.knobs.unprepare_s, unprepared)


def attach(twin: Twin, knobs: DraKnobs, seed: int) -> Dra:
    """The DRA driver in charge of the twin's MIG pods from now on."""
    dra = Dra(twin, knobs, random.Random(seed))
    twin.use_scheduler(dra)
    return dra
