"""Creating and destroying one MIG instance at a chosen placement, as NVML does for a per-pod allocator.

mig-parted rebuilds a whole GPU (`mig_parted.py`); the DRA driver and HAMi's device plugin instead call
`CreateGpuInstanceWithPlacement` for one instance and destroy it when its pod is done, leaving the others alone
(spec dynamic-mig-peers §1 "Lifecycle", §2 "Creation"). NVML refuses an instance that overlaps another's memory
slices, exceeds the GPU's compute slices or the profile's maximum ("Insufficient Resources"), and refuses to
destroy one a process holds ("In use by another client"); so does the twin.
"""

from __future__ import annotations

from simulations.twin.mig_parted import IN_USE
from simulations.twin.occupancy import Occupancy
from simulations.twin.state import TwinGpu, TwinInstance

INSUFFICIENT = "Insufficient Resources"


def occupancy(gpu: TwinGpu) -> Occupancy:
    """What the GPU's present instances take, held or not."""
    taken = Occupancy.empty()
    model = gpu.gpu_model
    for instance in gpu.instances:
        taken = taken.plus(model.profile(instance.profile), instance.start)
    return taken


def creation_problem(gpu: TwinGpu, profile: str, start: int) -> str | None:
    """Why NVML would refuse to create `profile` at `start` on this GPU now, or None."""
    if not gpu.mig_enabled:
        return f"GPU {gpu.index}: MIG mode is disabled"
    model = gpu.gpu_model
    if not model.has_profile(profile):
        return f"GPU {gpu.index}: {model.key} has no profile {profile}"
    wanted = model.profile(profile)
    if start not in wanted.starts:
        return f"GPU {gpu.index}: {wanted.name} cannot start at {start}"
    if not occupancy(gpu).admits(model, wanted, start):
        return f"GPU {gpu.index}: creating {wanted.name} at {start}: {INSUFFICIENT}"
    return None


def create(gpu: TwinGpu, profile: str, start: int) -> TwinInstance:
    """Create the instance (a GPU instance with one full compute instance); raises `ValueError` where NVML fails."""
    problem = creation_problem(gpu, profile, start)
    if problem is not None:
        raise ValueError(problem)
    instance = TwinInstance(profile=gpu.gpu_model.profile(profile).name, start=start)
    gpu.instances = sorted([*gpu.instances, instance], key=lambda i: i.start)  # replaced, not appended: see `watch`
    return instance


def destroy(gpu: TwinGpu, start: int) -> None:
    """Destroy the instance at `start`; raises `ValueError` when there is none or a pod holds it."""
    found = gpu.instance_at(start)
    if found is None:
        raise ValueError(f"GPU {gpu.index}: no instance at {start}")
    if found.pod is not None:
        raise ValueError(f"GPU {gpu.index}: destroying {found.profile} at {start}: {IN_USE}")
    gpu.instances = [i for i in gpu.instances if i is not found]
