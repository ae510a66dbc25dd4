"""A fake NVML for a whole node: several GPUs, GPU and compute instances, MIG devices, processes, errors.

It answers with pynvml's own constants, ctypes structures and exception classes, so the code under test runs
the same paths it runs against the real library. Every NVML function it does not implement, mutating ones
included (`nvmlDeviceSetMigMode`, `nvmlDeviceCreateGpuInstance`, `nvmlGpuInstanceDestroy`, resets, ...), is
recorded in `forbidden` and raises: the agent is read-only, and a test asserts `forbidden == []`.
"""

from __future__ import annotations

import ctypes
import types
from dataclasses import dataclass, field
from typing import Any

import pynvml

from solver.catalog import Profile, load_catalog

_SLICE_INDEX = {1: 0x0, 2: 0x1, 3: 0x2, 4: 0x3, 7: 0x4, 8: 0x5, 6: 0x6}


def profile_index(profile: Profile) -> int:
    """The NVML profile-index constant of a catalog profile (spec §4.2)."""
    if profile.name.endswith("+me"):
        return 0x7 if profile.compute_slices == 1 else 0x8
    if profile.compute_slices == 1 and profile.memory_slices == 2:
        return 0x9
    return _SLICE_INDEX[profile.compute_slices]


@dataclass
class FakeInstance:
    """A GPU instance; `cis` compute instances, each a MIG device; `processes` run on its first CI."""

    profile: str
    start: int
    gi: int
    cis: int = 1
    processes: int = 0
    uuid: str = ""


@dataclass
class FakeGpu:
    model: str
    uuid: str
    mig: tuple[int, int] | None = (1, 1)  # None: not MIG-capable (GetMigMode answers NOT_SUPPORTED)
    instances: list[FakeInstance] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # catalog name → the name the driver reports

    def __post_init__(self) -> None:
        catalog = load_catalog().model(self.model)
        self.catalog = catalog
        self.name = catalog.nvml_names[0]
        self.pci = int(catalog.pci_device_ids[0], 16)
        for instance in self.instances:
            instance.uuid = instance.uuid or f"MIG-{self.uuid.removeprefix('GPU-')}-{instance.gi:02d}"

    def devices(self) -> list[tuple[FakeInstance, int]]:
        """MIG devices in slot order: (instance, compute-instance id)."""
        return [(i, ci) for i in sorted(self.instances, key=lambda i: i.gi) for ci in range(i.cis)]


class FakeNvml:
    """Module-like: attribute access mirrors pynvml; `fail` maps a function name to the NVML error it raises."""

    def __init__(self, gpus: list[FakeGpu], *, driver: str = "550.54.15") -> None:
        self.gpus = gpus
        self.driver = driver
        self.fail: dict[str, int] = {}
        self.calls: list[str] = []
        self.forbidden: list[str] = []
        self._keep: list[ctypes.c_uint] = []  # the integers behind the fake GPU-instance handles

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("nvml"):
            return getattr(pynvml, name)  # constants, structures, NVMLError and its subclasses

        def refuse(*args: Any, **kwargs: Any) -> Any:
            self.forbidden.append(name)
            raise AssertionError(f"the agent must not call {name}")

        return refuse

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            raise pynvml.NVMLError(self.fail[name])

    # library
    def nvmlInit(self) -> None:
        self._call("nvmlInit")

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")

    def nvmlSystemGetDriverVersion(self) -> str:
        self._call("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        self._call("nvmlDeviceGetCount")
        return len(self.gpus)

    # physical GPUs: handle ("gpu", index); MIG devices: handle ("mig", index, slot)
    def nvmlDeviceGetHandleByIndex(self, index: int) -> tuple[str, int]:
        self._call("nvmlDeviceGetHandleByIndex")
        return ("gpu", index)

    def _gpu(self, handle: tuple[Any, ...]) -> FakeGpu:
        return self.gpus[handle[1]]

    def nvmlDeviceGetName(self, handle: tuple[Any, ...]) -> bytes:
        self._call("nvmlDeviceGetName")
        return self._gpu(handle).name.encode()

    def nvmlDeviceGetUUID(self, handle: tuple[Any, ...]) -> str:
        self._call("nvmlDeviceGetUUID")
        if handle[0] == "mig":
            instance, ci = self._gpu(handle).devices()[handle[2]]
            return instance.uuid if ci == 0 else f"{instance.uuid}-ci{ci}"
        return self._gpu(handle).uuid

    def nvmlDeviceGetPciInfo(self, handle: tuple[Any, ...]) -> Any:
        self._call("nvmlDeviceGetPciInfo")
        return types.SimpleNamespace(pciDeviceId=self._gpu(handle).pci)

    def nvmlDeviceGetMemoryInfo(self, handle: tuple[Any, ...]) -> Any:
        self._call("nvmlDeviceGetMemoryInfo")
        return types.SimpleNamespace(total=self._gpu(handle).catalog.memory_gb << 30)

    def nvmlDeviceGetMigMode(self, handle: tuple[Any, ...]) -> list[int]:
        self._call("nvmlDeviceGetMigMode")
        mig = self._gpu(handle).mig
        if mig is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return list(mig)

    # GPU instances
    def nvmlDeviceGetGpuInstanceProfileInfo(self, handle: tuple[Any, ...], index: int) -> Any:
        self._call("nvmlDeviceGetGpuInstanceProfileInfo")
        gpu = self._gpu(handle)
        if index >= 0x12:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        found = [p for p in gpu.catalog.profiles if profile_index(p) == index]
        if not found:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        p = found[0]
        info = pynvml.c_nvmlGpuInstanceProfileInfo_v2_t()
        info.id, info.sliceCount, info.instanceCount = p.id, p.compute_slices, p.max_count
        info.multiprocessorCount, info.memorySizeMB = p.multiprocessors or 0, p.memory_mib
        info.name = f"MIG {gpu.renamed.get(p.name, p.name)}".encode()
        return info

    def nvmlDeviceGetGpuInstances(self, handle: tuple[Any, ...], profile_id: int, array: Any, count: Any) -> int:
        self._call("nvmlDeviceGetGpuInstances")
        gpu = self._gpu(handle)
        name = next(p.name for p in gpu.catalog.profiles if p.id == profile_id)
        mine = [i for i in gpu.instances if i.profile == name]
        for n, instance in enumerate(mine):
            key = ctypes.c_uint(handle[1] * 1000 + instance.gi)
            self._keep.append(key)
            array[n] = ctypes.cast(ctypes.pointer(key), pynvml.c_nvmlGpuInstance_t)
        count._obj.value = len(mine)
        return 0

    def nvmlGpuInstanceGetInfo(self, gi_handle: Any) -> Any:
        self._call("nvmlGpuInstanceGetInfo")
        key = ctypes.cast(gi_handle, ctypes.POINTER(ctypes.c_uint)).contents.value
        gpu = self.gpus[key // 1000]
        instance = next(i for i in gpu.instances if i.gi == key % 1000)
        profile = gpu.catalog.profile(instance.profile)
        info = pynvml.c_nvmlGpuInstanceInfo_t()
        info.id, info.profileId = instance.gi, profile.id
        info.placement.start, info.placement.size = instance.start, profile.memory_slices
        return info

    # MIG devices
    def nvmlDeviceGetMaxMigDeviceCount(self, handle: tuple[Any, ...]) -> int:
        self._call("nvmlDeviceGetMaxMigDeviceCount")
        return self._gpu(handle).catalog.compute_slices

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: tuple[Any, ...], slot: int) -> tuple[str, int, int]:
        self._call("nvmlDeviceGetMigDeviceHandleByIndex")
        if slot >= len(self._gpu(handle).devices()):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return ("mig", handle[1], slot)

    def nvmlDeviceGetGpuInstanceId(self, mig: tuple[Any, ...]) -> int:
        self._call("nvmlDeviceGetGpuInstanceId")
        return self._gpu(mig).devices()[mig[2]][0].gi

    def nvmlDeviceGetComputeInstanceId(self, mig: tuple[Any, ...]) -> int:
        self._call("nvmlDeviceGetComputeInstanceId")
        return self._gpu(mig).devices()[mig[2]][1]

    def nvmlDeviceGetComputeRunningProcesses(self, mig: tuple[Any, ...]) -> list[Any]:
        self._call("nvmlDeviceGetComputeRunningProcesses")
        instance, ci = self._gpu(mig).devices()[mig[2]]
        count = instance.processes if ci == 0 else 0
        return [types.SimpleNamespace(pid=4000 + n, usedGpuMemory=1 << 30) for n in range(count)]
