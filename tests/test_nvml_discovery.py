"""NVML discovery against a fake NVML module built from pynvml's own constants and ctypes structures."""

import ctypes
import types
from typing import Any

import pynvml
import pytest

from optimizer.agent.nvml_discovery import compare_gpu, read_gpus
from solver.catalog import load_catalog
from solver.errors import MigoptError
from tests.cli_runner import run_cli

A100 = load_catalog().model("A100-40GB")
# profile-index constant of each A100-40GB profile (spec §4.2)
INDEX = {
    "1g.5gb": 0x0,
    "2g.10gb": 0x1,
    "3g.20gb": 0x2,
    "4g.20gb": 0x3,
    "7g.40gb": 0x4,
    "1g.5gb+me": 0x7,
    "1g.10gb": 0x9,
}


class FakeGpu:
    def __init__(self, instances: list[tuple[str, int]], mig: tuple[int, int] = (1, 1)) -> None:
        self.profiles = {INDEX[p.name]: p for p in A100.profiles}
        self.instances = instances
        self.mig = mig
        self.calls: list[str] = []


def fake_nvml(
    gpu: FakeGpu, *, init_error: int | None = None, tweak: dict[str, Any] | None = None
) -> types.SimpleNamespace:
    """A module-like object: real pynvml constants, structures and errors; functions answering for one GPU."""
    tweak = tweak or {}
    nvml = types.SimpleNamespace(**{k: getattr(pynvml, k) for k in dir(pynvml) if not k.startswith("nvml")})

    def record(name: str) -> None:
        assert name.startswith(("nvmlDeviceGet", "nvmlGpuInstanceGet", "nvmlInit", "nvmlShutdown")), name
        gpu.calls.append(name)

    def init() -> None:
        record("nvmlInit")
        if init_error is not None:
            raise pynvml.NVMLError(init_error)

    def profile_info(handle: Any, index: int) -> Any:
        record("nvmlDeviceGetGpuInstanceProfileInfo")
        if index not in gpu.profiles:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        p = gpu.profiles[index]
        info = pynvml.c_nvmlGpuInstanceProfileInfo_v2_t()
        info.id = p.id
        info.sliceCount = p.compute_slices
        info.instanceCount = tweak.get(f"{p.name}.max", p.max_count)
        info.multiprocessorCount = p.multiprocessors or 0
        info.memorySizeMB = tweak.get(f"{p.name}.mib", p.memory_mib)
        info.name = f"MIG {p.name}".encode() if tweak.get("names", True) else b""
        return info

    def placements(handle: Any, profile_id: int, array: Any, count: Any) -> int:
        record("nvmlDeviceGetGpuInstancePossiblePlacements")
        p = next(p for p in A100.profiles if p.id == profile_id)
        starts = tweak.get(f"{p.name}.starts", p.starts)
        for i, s in enumerate(starts):
            array[i].start, array[i].size = s, p.memory_slices
        count._obj.value = len(starts)
        return 0

    def instances(handle: Any, profile_id: int, array: Any, count: Any) -> int:
        record("nvmlDeviceGetGpuInstances")
        name = next(p.name for p in A100.profiles if p.id == profile_id)
        starts = [s for n, s in gpu.instances if n == name]
        for i, s in enumerate(starts):
            array[i] = ctypes.cast(ctypes.pointer(ctypes.c_uint(s)), pynvml.c_nvmlGpuInstance_t)
        count._obj.value = len(starts)
        return 0

    def instance_info(gi: Any) -> Any:
        record("nvmlGpuInstanceGetInfo")
        info = pynvml.c_nvmlGpuInstanceInfo_t()
        info.placement.start = ctypes.cast(gi, ctypes.POINTER(ctypes.c_uint)).contents.value
        return info

    def mig_mode(handle: Any) -> list[int]:
        record("nvmlDeviceGetMigMode")
        return list(gpu.mig)

    nvml.nvmlInit = init
    nvml.nvmlShutdown = lambda: record("nvmlShutdown")
    nvml.nvmlDeviceGetCount = lambda: (record("nvmlDeviceGetCount"), 1)[1]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: (record("nvmlDeviceGetHandleByIndex"), i)[1]
    nvml.nvmlDeviceGetName = lambda h: (record("nvmlDeviceGetName"), b"NVIDIA A100-SXM4-40GB")[1]
    nvml.nvmlDeviceGetUUID = lambda h: (record("nvmlDeviceGetUUID"), "GPU-0000")[1]
    nvml.nvmlDeviceGetPciInfo = lambda h: (
        record("nvmlDeviceGetPciInfo"),
        types.SimpleNamespace(pciDeviceId=0x20B010DE),
    )[1]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: (record("nvmlDeviceGetMemoryInfo"), types.SimpleNamespace(total=40 << 30))[
        1
    ]
    nvml.nvmlDeviceGetMigMode = mig_mode
    nvml.nvmlDeviceGetGpuInstanceProfileInfo = profile_info
    nvml.nvmlDeviceGetGpuInstancePossiblePlacements = placements
    nvml.nvmlDeviceGetGpuInstances = instances
    nvml.nvmlGpuInstanceGetInfo = instance_info
    return nvml


def test_a_gpu_that_matches_the_catalog_has_no_differences() -> None:
    gpu = FakeGpu([("3g.20gb", 4), ("1g.5gb", 0), ("2g.10gb", 2)])
    [found] = read_gpus(fake_nvml(gpu))
    comparison = compare_gpu(found)
    assert comparison.model == "A100-40GB"
    assert comparison.differences == []
    assert [(i.profile, i.start) for i in found.instances] == [("1g.5gb", 0), ("2g.10gb", 2), ("3g.20gb", 4)]
    assert comparison.layout_problems == []
    assert found.mig_current and found.mig_pending


def test_every_difference_is_reported() -> None:
    tweak = {"3g.20gb.starts": (0, 2, 4), "1g.5gb.max": 6, "7g.40gb.mib": 40000, "2g.10gb.mib": 12000}
    gpu = FakeGpu([])
    del gpu.profiles[INDEX["1g.10gb"]]  # an older driver without 1g.10gb
    [found] = read_gpus(fake_nvml(gpu, tweak=tweak))
    diffs = {(d.profile, d.field): d for d in compare_gpu(found).differences}
    assert diffs[("3g.20gb", "starts")].nvml == [0, 2, 4]
    assert diffs[("1g.5gb", "max_count")].nvml == 6
    assert diffs[("7g.40gb", "memory_mib")].severity == "minor"  # within 2 %
    assert diffs[("2g.10gb", "memory_mib")].severity == "mismatch"
    assert diffs[("1g.10gb", "profile")].nvml is None
    assert len(diffs) == 5


def test_names_are_derived_when_the_driver_gives_none() -> None:
    [found] = read_gpus(fake_nvml(FakeGpu([]), tweak={"names": False}))
    assert {p.name for p in found.profiles} == set(A100.profile_names)


def test_only_read_calls_are_made() -> None:
    gpu = FakeGpu([("7g.40gb", 0)])
    read_gpus(fake_nvml(gpu))
    assert gpu.calls[0] == "nvmlInit" and gpu.calls[-1] == "nvmlShutdown"
    assert all(c.startswith(("nvmlDeviceGet", "nvmlGpuInstanceGet", "nvmlInit", "nvmlShutdown")) for c in gpu.calls)


def test_mig_disabled_reads_no_instances() -> None:
    gpu = FakeGpu([], mig=(0, 1))
    [found] = read_gpus(fake_nvml(gpu))
    assert not found.mig_current and found.mig_pending
    assert "nvmlDeviceGetGpuInstances" not in gpu.calls


def test_missing_driver_is_one_line() -> None:
    with pytest.raises(MigoptError) as err:
        read_gpus(fake_nvml(FakeGpu([]), init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    assert str(err.value).startswith("NVML unavailable") and "\n" not in str(err.value)


def test_cli_prints_the_comparison(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("migopt.cli.load_nvml", lambda: fake_nvml(FakeGpu([("7g.40gb", 0)])))
    result = run_cli(capsys, "catalog", "--from-nvml")
    assert result.code == 0
    assert "A100-40GB" in result.out and "matches the catalog" in result.out
    monkeypatch.setattr("migopt.cli.load_nvml", lambda: fake_nvml(FakeGpu([]), tweak={"1g.5gb.max": 6}))
    result = run_cli(capsys, "catalog", "--from-nvml", "-o", "json")
    assert result.code == 1
    assert '"field": "max_count"' in result.out
