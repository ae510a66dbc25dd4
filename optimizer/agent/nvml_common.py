"""NVML reading shared by `migopt catalog --from-nvml` and the node agent.

Both read the same facts the same way (profile names by the driver's or go-nvlib's rule, existing GPU
instances), so the rules live here once. Every function is read-only: only NVML `Get` calls. The NVML
module is always a parameter so tests inject a fake and production passes `pynvml`.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from solver.errors import MigoptError

# Profile-index constants → the attribute suffix go-nvlib gives the profile name (spec §2.1, §4.2).
_INDEX_ATTRIBUTES = {
    0x7: "+me",
    0x8: "+me",
    0xA: "+gfx",
    0xB: "+gfx",
    0xC: "+gfx",
    0x11: "+gfx",
    0xD: "-me",
    0xE: "-me",
    0xF: "+me.all",
    0x10: "+me.all",
}
PROFILE_INDEX_COUNT = 0x12
MIB = 1 << 20


def load_nvml() -> ModuleType:
    """Import pynvml (from nvidia-ml-py); its absence is a user-facing condition, not a crash."""
    try:
        import pynvml
    except ImportError as err:  # pragma: no cover - the dependency is declared
        raise MigoptError("NVML unavailable: the nvidia-ml-py package is not installed") from err
    module: ModuleType = pynvml
    return module


def text(value: bytes | str) -> str:
    """NVML strings arrive as bytes or str depending on the pynvml version."""
    return value.decode() if isinstance(value, bytes) else value


def profile_name(index: int, info: Any, total_mib: int) -> str:
    """The driver's own name when it gives one, else go-nvlib's formula (spec §2.1)."""
    reported = text(getattr(info, "name", b"")).strip().removeprefix("MIG ").strip()
    if reported:
        return reported
    fraction = math.ceil(info.memorySizeMB / total_mib * 8) / 8
    # Go's math.Round: halves away from zero (Python's round() would make H200's 70.5 GB a `70gb` name)
    gb = math.floor(fraction * math.ceil(total_mib * MIB / (1 << 30)) + 0.5)
    return f"{info.sliceCount}g.{gb}gb{_INDEX_ATTRIBUTES.get(index, '')}"


def profile_infos(nvml: Any, handle: Any) -> Iterator[tuple[int, Any]]:
    """(profile index, profile info) for every GPU-instance profile this GPU has.

    NOT_SUPPORTED means the GPU lacks that profile, INVALID_ARGUMENT means the driver predates the index;
    both are skipped, any other error propagates.
    """
    for index in range(PROFILE_INDEX_COUNT):
        try:
            info = nvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, index)
        except nvml.NVMLError as err:
            if err.value in (nvml.NVML_ERROR_NOT_SUPPORTED, nvml.NVML_ERROR_INVALID_ARGUMENT):
                continue
            raise
        yield index, info


def gpu_instance_infos(nvml: Any, handle: Any, profile_id: int, max_count: int) -> list[Any]:
    """`nvmlGpuInstanceGetInfo` of every existing GPU instance of one profile (id, profileId, placement)."""
    count = ctypes.c_uint(0)
    array = (nvml.c_nvmlGpuInstance_t * max(max_count, 1))()
    nvml.nvmlDeviceGetGpuInstances(handle, profile_id, array, ctypes.byref(count))
    return [nvml.nvmlGpuInstanceGetInfo(array[i]) for i in range(count.value)]


def mig_mode(nvml: Any, handle: Any) -> tuple[bool, bool, bool]:
    """(capable, current, pending); NOT_SUPPORTED is how mig-parted decides a GPU is not MIG-capable."""
    try:
        current, pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError as err:
        if err.value != nvml.NVML_ERROR_NOT_SUPPORTED:
            raise
        return False, False, False
    return True, bool(current), bool(pending)


def pci_device_id(nvml: Any, handle: Any) -> str:
    """The PCI device id as mig-parted's device filters spell it, e.g. 0x20B010DE."""
    return f"0x{nvml.nvmlDeviceGetPciInfo(handle).pciDeviceId:08X}"
