"""Read what a real GPU says about MIG through NVML and compare it with the catalog.

Read-only by construction: only `Get` calls are made (profile info, possible placements, MIG mode, existing
GPU instances). The NVML module is a parameter so tests inject a fake and production passes `pynvml`.
"""

from __future__ import annotations

import ctypes
from typing import Any, Literal

from pydantic import BaseModel

from optimizer.agent.nvml_common import (
    MIB,
    gpu_instance_infos,
    load_nvml,
    mig_mode,
    pci_device_id,
    profile_infos,
    profile_name,
    text,
)
from solver.catalog import GpuModel, load_catalog
from solver.errors import MigoptError
from solver.geometry import Instance, check_layout

__all__ = ["CatalogDifference", "GpuComparison", "NvmlGpu", "NvmlProfile", "compare_gpu", "load_nvml", "read_gpus"]


class NvmlProfile(BaseModel):
    """One GPU-instance profile as NVML reports it."""

    name: str
    id: int
    compute_slices: int
    memory_slices: int
    memory_mib: int
    multiprocessors: int
    max_count: int
    starts: list[int]


class NvmlGpu(BaseModel):
    """One physical GPU as NVML reports it."""

    index: int
    name: str
    uuid: str
    pci_device_id: str
    memory_mib: int
    mig_capable: bool
    mig_current: bool
    mig_pending: bool
    profiles: list[NvmlProfile]
    instances: list[Instance]


class CatalogDifference(BaseModel):
    """A fact where the GPU and the catalog disagree."""

    gpu: int
    profile: str | None
    field: str
    catalog: Any
    nvml: Any
    severity: Literal["mismatch", "minor"]


class GpuComparison(BaseModel):
    gpu: NvmlGpu
    model: str | None
    differences: list[CatalogDifference]
    layout_problems: list[str]


def _placements(nvml: Any, handle: Any, profile_id: int) -> tuple[list[int], set[int]]:
    """Allowed starts and the placement sizes (one size per profile on every known GPU)."""
    count = ctypes.c_uint(16)
    array = (nvml.c_nvmlGpuInstancePlacement_t * 16)()
    nvml.nvmlDeviceGetGpuInstancePossiblePlacements(handle, profile_id, array, ctypes.byref(count))
    return sorted(array[i].start for i in range(count.value)), {array[i].size for i in range(count.value)}


def _instances(nvml: Any, handle: Any, profile: NvmlProfile) -> list[Instance]:
    infos = gpu_instance_infos(nvml, handle, profile.id, profile.max_count)
    return [Instance(profile=profile.name, start=info.placement.start) for info in infos]


def read_gpu(nvml: Any, index: int) -> NvmlGpu:
    """Everything migopt needs to know about one GPU, through read-only NVML calls."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    total_mib = int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // MIB
    capable, current, pending = mig_mode(nvml, handle)
    profiles: list[NvmlProfile] = []
    if capable:
        for profile_index, info in profile_infos(nvml, handle):
            starts, sizes = _placements(nvml, handle, info.id)
            profiles.append(
                NvmlProfile(
                    name=profile_name(profile_index, info, total_mib),
                    id=info.id,
                    compute_slices=info.sliceCount,
                    memory_slices=max(sizes) if sizes else 0,
                    memory_mib=int(info.memorySizeMB),
                    multiprocessors=info.multiprocessorCount,
                    max_count=info.instanceCount,
                    starts=starts,
                )
            )
    instances = [i for p in profiles for i in _instances(nvml, handle, p)] if current else []
    return NvmlGpu(
        index=index,
        name=text(nvml.nvmlDeviceGetName(handle)),
        uuid=text(nvml.nvmlDeviceGetUUID(handle)),
        pci_device_id=pci_device_id(nvml, handle),
        memory_mib=total_mib,
        mig_capable=capable,
        mig_current=current,
        mig_pending=pending,
        profiles=profiles,
        instances=sorted(instances, key=lambda i: (i.start, i.profile)),
    )


def read_gpus(nvml: Any) -> list[NvmlGpu]:
    """Every GPU NVML can see. A missing driver or library becomes one `MigoptError` line."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        raise MigoptError(f"NVML unavailable: {err} (no NVIDIA driver on this machine?)") from err
    try:
        return [read_gpu(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
    except nvml.NVMLError as err:
        raise MigoptError(f"NVML error while reading GPUs: {err}") from err
    finally:
        nvml.nvmlShutdown()


def _model_for(gpu: NvmlGpu) -> GpuModel | None:
    catalog = load_catalog()
    for name in (gpu.pci_device_id, gpu.name):
        try:
            return catalog.model(name)
        except MigoptError:
            continue
    return None


def compare_gpu(gpu: NvmlGpu, memory_tolerance: float = 0.02) -> GpuComparison:
    """Every difference between what NVML reports and the catalog entry for this GPU's model.

    Memory sizes vary slightly between drivers (spec §4.3), so a memory difference within `memory_tolerance`
    is reported as `minor`; every other difference is a `mismatch`.
    """
    model = _model_for(gpu)
    if model is None:
        diff = CatalogDifference(
            gpu=gpu.index,
            profile=None,
            field="model",
            catalog=None,
            nvml=f"{gpu.name} {gpu.pci_device_id}",
            severity="mismatch",
        )
        return GpuComparison(gpu=gpu, model=None, differences=[diff], layout_problems=[])
    differences: list[CatalogDifference] = []

    def differ(profile: str | None, field: str, catalog: Any, nvml: Any, minor: bool = False) -> None:
        severity: Literal["mismatch", "minor"] = "minor" if minor else "mismatch"
        differences.append(
            CatalogDifference(
                gpu=gpu.index, profile=profile, field=field, catalog=catalog, nvml=nvml, severity=severity
            )
        )

    if gpu.mig_capable:
        seen: set[str] = set()
        for reported in gpu.profiles:
            if not model.has_profile(reported.name):
                differ(reported.name, "profile", None, "present")
                continue
            entry = model.profile(reported.name)
            seen.add(entry.name)
            if entry.name != reported.name:
                differ(entry.name, "name", entry.name, reported.name, minor=True)
            for field, ours, theirs in (
                ("id", entry.id, reported.id),
                ("compute_slices", entry.compute_slices, reported.compute_slices),
                ("memory_slices", entry.memory_slices, reported.memory_slices),
                ("max_count", entry.max_count, reported.max_count),
                ("starts", list(entry.starts), reported.starts),
            ):
                if ours != theirs:
                    differ(entry.name, field, ours, theirs)
            if entry.multiprocessors is not None and entry.multiprocessors != reported.multiprocessors:
                differ(entry.name, "multiprocessors", entry.multiprocessors, reported.multiprocessors)
            if entry.memory_mib != reported.memory_mib:
                close = abs(entry.memory_mib - reported.memory_mib) <= memory_tolerance * entry.memory_mib
                differ(entry.name, "memory_mib", entry.memory_mib, reported.memory_mib, minor=close)
        for missing in model.profile_names:
            if missing not in seen:
                differ(missing, "profile", "present", None)
    layout_problems = check_layout(model, gpu.instances) if gpu.mig_current else []
    return GpuComparison(gpu=gpu, model=model.key, differences=differences, layout_problems=layout_problems)
