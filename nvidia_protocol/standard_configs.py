"""The GPU Operator's standard MIG config names as per-GPU maps (spec §1.8): what a `static:<config>` policy runs.

`all-disabled` is MIG off (None); `all-enabled` is MIG on with no instances; `all-<profile>` is the largest count
of that one profile; `all-balanced` is 2 x 1g + 1 x 2g + 1 x 3g on 7-slice GPUs and 2 x 1g + 1 x 2g on 4-slice
ones, each slot taking the attribute-free profile of that size with the largest maximum count (1g.10gb rather
than 1g.20gb), as mig-parted's generator does.
"""

from __future__ import annotations

from collections.abc import Sequence

from nvidia_protocol.migparted import MigConfigEntry, MigPartedConfig
from solver.catalog import GpuModel
from solver.errors import MigoptError
from solver.geometry import max_alone


def _largest_plain(model: GpuModel, slices: int) -> str | None:
    plain = [p for p in model.profiles if p.compute_slices == slices and "+" not in p.name and "-" not in p.name]
    return max(plain, key=lambda p: (p.max_count, -p.memory_slices)).name if plain else None


def balanced(model: GpuModel) -> dict[str, int]:
    wanted = {1: 2, 2: 1, 3: 1} if model.compute_slices == 7 else {1: 2, 2: 1}
    result: dict[str, int] = {}
    for slices, count in wanted.items():
        name = _largest_plain(model, slices)
        if name is None:
            raise MigoptError(f"{model.key} has no {slices}g profile for all-balanced")
        result[name] = count
    return result


def standard_map(model: GpuModel, name: str) -> dict[str, int] | None:
    """The map a GPU of this model gets under the standard config `name` (None: MIG disabled)."""
    if name == "all-disabled":
        return None
    if name == "all-enabled":
        return {}
    if name == "all-balanced":
        return balanced(model)
    if name.startswith("all-"):
        profile = model.profile(name.removeprefix("all-").replace(".me", "+me")).name
        return {profile: max_alone(model, profile)}
    raise MigoptError(
        f"unknown standard MIG config {name!r}: expected all-disabled, all-enabled, all-balanced or all-<profile>"
    )


def standard_names(model: GpuModel) -> list[str]:
    """Every standard config name the GPU Operator's default mig-parted ConfigMap gives this model."""
    profiles = [f"all-{p.name.replace('+me', '.me')}" for p in model.profiles if "+" not in p.name or "+me" in p.name]
    return ["all-disabled", "all-enabled", *profiles, "all-balanced"]


def standard_config(models: Sequence[GpuModel]) -> MigPartedConfig:
    """A mig-parted file with every standard name for these models, one entry per model (with a device filter
    when several models share the file), like the operator's default: `kubectl label … all-1g.5gb` just works."""
    configs: dict[str, list[MigConfigEntry]] = {}
    for model in models:
        for name in standard_names(model):
            try:
                devices = standard_map(model, name)
            except MigoptError:
                continue  # e.g. all-balanced on a model without one of its sizes
            entry: dict[str, object] = {"devices": "all", "mig-enabled": devices is not None}
            if devices is not None:
                entry["mig-devices"] = devices
            if len(models) > 1:
                entry["device-filter"] = list(model.pci_device_ids)
            configs.setdefault(name, []).append(MigConfigEntry.model_validate(entry))
    return MigPartedConfig.model_validate({"version": "v1", "mig-configs": configs})
