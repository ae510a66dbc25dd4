"""Read a node's live MIG layout through NVML: GPU instances, compute instances, MIG device UUIDs, busy devices.

This is what the node agent reports; `nvml_discovery` answers a different question (does the hardware match
the catalog). Read-only by construction: only NVML `Get`/query calls. Profile names are the catalog's
(mig-parted's spelling), so the report speaks the same language as the planner even when a driver drifts.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import BaseModel

from nvidia_protocol.agent_report import ReportedGpu, ReportedInstance
from optimizer.agent.nvml_common import (
    MIB,
    gpu_instance_infos,
    mig_mode,
    pci_device_id,
    profile_infos,
    profile_name,
    text,
)
from solver.catalog import GpuModel, load_catalog
from solver.errors import MigoptError


class MigDevice(BaseModel):
    """One MIG device (a compute instance) as NVML shows it; `busy` is None when processes cannot be read."""

    gi: int
    ci: int
    uuid: str
    busy: bool | None


class NodeLayout(BaseModel):
    """Everything read from NVML in one pass, plus the problems worth one log line (not report errors)."""

    driver: str | None
    gpus: list[ReportedGpu]
    warnings: list[str] = []


def catalog_model(name: str, pci_id: str) -> GpuModel | None:
    """The catalog entry for a GPU, by PCI id first (exact) then NVML name; None for a GPU migopt does not know."""
    catalog = load_catalog()
    for key in (pci_id, name):
        try:
            return catalog.model(key)
        except MigoptError:
            continue
    return None


def catalog_profile_name(model: GpuModel | None, profile_id: int, nvml_name: str) -> str:
    """mig-parted's name for an NVML profile: exact name, then NVML profile id, then a known drifted name.

    The id is tried before drift so a driver that renames a profile (3g.39gb) maps silently and stably; a GPU
    or profile the catalog lacks keeps the driver's own name.
    """
    if model is None:
        return nvml_name
    if nvml_name in model.profile_names:
        return nvml_name
    by_id = next((p.name for p in model.profiles if p.id == profile_id), None)
    if by_id is not None:
        return by_id
    return model.profile(nvml_name).name if model.has_profile(nvml_name) else nvml_name


def _is(nvml: Any, err: Exception, *codes: str) -> bool:
    return isinstance(err, nvml.NVMLError) and getattr(err, "value", None) in {getattr(nvml, c) for c in codes}


def read_mig_devices(nvml: Any, handle: Any, warnings: list[str]) -> list[MigDevice]:
    """Every MIG device under a GPU. An empty slot answers NOT_FOUND; processes may be unreadable."""
    devices: list[MigDevice] = []
    for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nvml.NVMLError as err:
            if _is(nvml, err, "NVML_ERROR_NOT_FOUND", "NVML_ERROR_INVALID_ARGUMENT"):
                continue
            raise
        uuid = text(nvml.nvmlDeviceGetUUID(mig))
        busy: bool | None
        try:
            busy = len(nvml.nvmlDeviceGetComputeRunningProcesses(mig)) > 0
        except nvml.NVMLError as err:
            unreadable = ("NOT_SUPPORTED", "NO_PERMISSION", "FUNCTION_NOT_FOUND", "ARGUMENT_VERSION_MISMATCH")
            if not _is(nvml, err, *(f"NVML_ERROR_{code}" for code in unreadable)):
                raise
            warnings.append(f"processes of MIG devices unreadable ({err}); busy reported as false")
            busy = None
        gi = nvml.nvmlDeviceGetGpuInstanceId(mig)
        ci = nvml.nvmlDeviceGetComputeInstanceId(mig)
        devices.append(MigDevice(gi=gi, ci=ci, uuid=uuid, busy=busy))
    return devices


def read_instances(nvml: Any, handle: Any, model: GpuModel | None, warnings: list[str]) -> list[ReportedInstance]:
    """The GPU instances of a MIG-enabled GPU, each with its compute instances, UUID and busy flag."""
    total_mib = int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // MIB
    devices = read_mig_devices(nvml, handle, warnings)
    instances: list[ReportedInstance] = []
    for index, profile in profile_infos(nvml, handle):
        name = catalog_profile_name(model, profile.id, profile_name(index, profile, total_mib))
        for info in gpu_instance_infos(nvml, handle, profile.id, profile.instanceCount):
            mine = sorted((d for d in devices if d.gi == info.id), key=lambda d: d.ci)
            instances.append(
                ReportedInstance(
                    profile=name,
                    profile_id=info.profileId,
                    gi=info.id,
                    start=info.placement.start,
                    size=info.placement.size,
                    compute_instances=len(mine),
                    uuid=mine[0].uuid if mine else None,
                    busy=any(d.busy for d in mine),
                )
            )
    return sorted(instances, key=lambda i: (i.start, i.gi))


def read_gpu(nvml: Any, index: int, warnings: list[str]) -> ReportedGpu:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = text(nvml.nvmlDeviceGetName(handle))
    pci_id = pci_device_id(nvml, handle)
    _, current, pending = mig_mode(nvml, handle)
    model = catalog_model(name, pci_id)
    return ReportedGpu(
        index=index,
        uuid=text(nvml.nvmlDeviceGetUUID(handle)),
        name=name,
        pci_device_id=pci_id,
        mig_current=current,
        mig_pending=pending,
        instances=read_instances(nvml, handle, model, warnings) if current else [],
    )


def read_layout(nvml: Any) -> NodeLayout:
    """One read of every GPU on the node, between nvmlInit and nvmlShutdown; NVML trouble is one MigoptError line.

    Initialising per read lets the agent start before the driver container and pick the GPUs up later.
    """
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        raise MigoptError(f"NVML unavailable: {err} (no NVIDIA driver on this node?)") from err
    try:
        warnings: list[str] = []
        driver = text(nvml.nvmlSystemGetDriverVersion())
        gpus = [read_gpu(nvml, i, warnings) for i in range(nvml.nvmlDeviceGetCount())]
        return NodeLayout(driver=driver, gpus=gpus, warnings=list(dict.fromkeys(warnings)))
    except nvml.NVMLError as err:
        raise MigoptError(f"NVML error while reading GPUs: {err}") from err
    finally:
        with contextlib.suppress(nvml.NVMLError):  # a failed shutdown must not hide the read's result or error
            nvml.nvmlShutdown()
