"""The GPU Operator's standard MIG config names (`all-disabled`, `all-1g.10gb`, `all-balanced`…) as per-GPU maps:
what a node labelled with one holds, and what a `static:<config>` policy runs.

They are read from the data of NVIDIA's own file, the operator's default mig-parted config
(`data/operator-default-config.yaml`: its entries without its comments, the source in its header), because no
rule over the catalog reproduces it. Most of its `all-<profile>`
entries have no device filter and reach every GPU: a GB200 whose pre-production driver calls its 1-slice profile
`1g.24gb` gets `all-1g.24gb` as written for the H100 NVL and RTX PRO 6000, 4 instances, not the 7 the GB200's
profile allows. Its filtered entries name the PCI ids NVIDIA listed: `all-1g.35gb` names the H200 SXM's, not the
H200 NVL's, so an H200 NVL has no `all-1g.35gb`.

A name is standard for a model when the file gives every PCI id of the model the same target and the model can
hold it (profiles it has, drifted names included, with a non-overlapping placement); on other GPUs mig-parted
fails it (spec §2.6). `all-disabled` is MIG off (None), `all-enabled` MIG on with no instances.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from types import MappingProxyType

from nvidia_protocol.migparted import MigConfigEntry, MigPartedConfig, parse_config
from solver.catalog import GpuModel
from solver.errors import MigoptError
from solver.geometry import find_layout

Target = dict[str, int] | None
"""What one GPU becomes: None (MIG disabled) or a `mig-devices` map as the file spells it."""

OPERATOR_DEFAULT_FILE = "data/operator-default-config.yaml"
_ABSENT = "absent"


@cache
def operator_default() -> MigPartedConfig:
    """NVIDIA's default mig-parted config as shipped with this package (parsed once per process)."""
    text = resources.files("nvidia_protocol").joinpath(OPERATOR_DEFAULT_FILE).read_text(encoding="utf-8")
    return parse_config(text)


def _device_id(text: str) -> int | None:
    try:
        return int(text.split(":", 1)[0], 16)
    except ValueError:
        return None


def _names_gpu(entry: MigConfigEntry, pci: str) -> bool:
    """Whether the entry reaches a GPU with this PCI id (no filter: every GPU). Every entry of NVIDIA's file says
    `devices: all` (tests/test_standard_configs.py holds it to that), so a target is the same for every index."""
    raw = entry.device_filter
    filters = [f for f in ([raw] if isinstance(raw, str) else list(raw or [])) if f]
    return not filters or _device_id(pci) in {_device_id(f) for f in filters}


def _target_on(entries: Sequence[MigConfigEntry], pci: str) -> Target | str:
    """The last matching entry wins, as mig-parted applies each match in turn; `_ABSENT` when none matches."""
    found: Target | str = _ABSENT
    for entry in entries:
        if _names_gpu(entry, pci):
            found = dict(entry.mig_devices or {}) if entry.mig_enabled else None
    return found


def _holds(model: GpuModel, target: Mapping[str, int]) -> bool:
    counts: Counter[str] = Counter()
    for name, count in target.items():
        profile = model.resolve(name)
        if profile is None:
            return False
        counts[profile.name] += count
    return find_layout(model, {name: count for name, count in counts.items() if count}) is not None


@cache
def standard_targets(model: GpuModel) -> Mapping[str, Target]:
    """Every standard name of this model with its target, in the file's order."""
    result: dict[str, Target] = {}
    for name, entries in operator_default().mig_configs.items():
        first, *others = (_target_on(entries, pci) for pci in model.pci_device_ids)
        if any(other != first for other in others):
            continue  # the model's boards get different targets: the name is no model's own
        if isinstance(first, str) or (first is not None and not _holds(model, first)):
            continue
        result[name] = first
    return MappingProxyType(result)


def standard_map(model: GpuModel, name: str) -> dict[str, int] | None:
    """The map a GPU of this model gets under the standard config `name` (None: MIG disabled)."""
    targets = standard_targets(model)
    if name not in targets:
        raise MigoptError(
            f"{name!r} is not a standard MIG config of {model.key} (the GPU Operator's default config gives it: "
            f"{', '.join(targets)})"
        )
    target = targets[name]
    return None if target is None else dict(target)


def standard_names(model: GpuModel) -> list[str]:
    """Every standard config name the GPU Operator's default mig-parted config gives this model."""
    return list(standard_targets(model))


def standard_config(models: Sequence[GpuModel]) -> MigPartedConfig:
    """A mig-parted file with every standard name for these models, one entry per model (with a device filter
    when several models share the file), like the operator's default: `kubectl label … all-1g.5gb` just works."""
    configs: dict[str, list[MigConfigEntry]] = {}
    for model in models:
        for name, devices in standard_targets(model).items():
            entry: dict[str, object] = {"devices": "all", "mig-enabled": devices is not None}
            if devices is not None:
                entry["mig-devices"] = dict(devices)
            if len(models) > 1:
                entry["device-filter"] = list(model.pci_device_ids)
            configs.setdefault(name, []).append(MigConfigEntry.model_validate(entry))
    return MigPartedConfig.model_validate({"version": "v1", "mig-configs": configs})
