"""The standard config names against NVIDIA's default mig-parted config, and the catalog against that file.

`nvidia_protocol/data/operator-default-config.yaml` holds the entries of NVIDIA's file (gpu-operator
assets/state-mig-manager/0400_configmap.yaml@a22dbf671f2e). Here it is read a second way, by the twin's
independent reader of mig-parted files (`simulations/twin/mig_parted_reader.py`), so the product's matching of
entries to GPUs is checked against another implementation; and the catalog's facts (profile names, maximum
counts, PCI ids) are checked against what NVIDIA wrote in it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib import resources

import pytest

from nvidia_protocol.migparted import parse_config
from nvidia_protocol.standard_configs import (
    OPERATOR_DEFAULT_FILE,
    operator_default,
    standard_config,
    standard_map,
    standard_names,
)
from simulations.twin.mig_parted_reader import MigPartedFile, Target, read, targets
from solver.catalog import GpuModel, Profile, load_catalog
from solver.errors import MigoptError
from solver.geometry import find_layout, max_alone, normalise_map

CATALOG = load_catalog()
TEXT = resources.files("nvidia_protocol").joinpath(OPERATOR_DEFAULT_FILE).read_text(encoding="utf-8")
NVIDIA: MigPartedFile = read(TEXT)

DEPARTURES = {("H200-NVL", "1g.35gb")}
"""Catalog profiles whose `all-<profile>` the operator's file does not give the model: its `all-1g.35gb` is filtered
to the H200 SXM's PCI id only (0x233510DE), leaving the H200 NVL (0x233B10DE) out."""


def config_name(profile: str) -> str:
    """mig-parted's `all-<profile>` name: `+` becomes `.`, `-` stays (builder.go `normalizeProfileName`)."""
    return "all-" + profile.replace("+", ".")


def nvidia_target(model: GpuModel, name: str) -> Target | str:
    """What the twin's reader says NVIDIA's file gives one GPU of this model under `name` ("none": no entry)."""
    found = targets(NVIDIA.select(name), [(0, model)])
    return found.get(0, "none")


def holds(model: GpuModel, target: Mapping[str, int]) -> bool:
    """Whether the model has every profile named (drift included) and a layout of them exists."""
    if not all(model.has_profile(name) for name in target):
        return False
    return find_layout(model, normalise_map(model, target)) is not None


def balanced_by_mig_parted_rule(model: GpuModel) -> dict[str, int] | None:
    """mig-parted's generator (pkg/mig/builder/balanced.go@bd7160f43f16) over the catalog: among profiles without
    attributes, the biggest slice count picks the formula (7: 2x1g+1x2g+1x3g, 4: 2x1g+1x2g) and each size takes
    the profile with the largest maximum count."""
    plain = [p for p in model.profiles if "+" not in p.name and "-" not in p.name]
    formula = {7: {1: 2, 2: 1, 3: 1}, 4: {1: 2, 2: 1}}.get(max(p.compute_slices for p in plain))
    if formula is None:
        return None
    chosen: dict[int, Profile] = {}
    for p in plain:
        if p.compute_slices in formula and (
            p.compute_slices not in chosen or p.max_count > chosen[p.compute_slices].max_count
        ):
            chosen[p.compute_slices] = p
    if set(chosen) != set(formula):
        return None
    return {chosen[g].name: count for g, count in formula.items()}


# --- the product's standard configs are NVIDIA's --------------------------------------------------------------


@pytest.mark.parametrize("model", CATALOG.models, ids=lambda m: m.key)
def test_every_standard_config_equals_nvidias_for_every_valid_pair(model: GpuModel) -> None:
    valid = {}
    for name in NVIDIA.configs:
        target = nvidia_target(model, name)
        if target != "none" and (target is None or holds(model, target)):
            valid[name] = target
    assert set(standard_names(model)) == set(valid)
    for name, target in valid.items():
        assert standard_map(model, name) == target, name


def test_the_brief_cases() -> None:
    gb200, h200, h200_nvl, gb300 = (CATALOG.model(k) for k in ("GB200", "H200", "H200-NVL", "GB300"))
    # unfiltered entries reach a GB200 whose driver prints pre-production names: as written, not as the catalog's
    assert standard_map(gb200, "all-1g.24gb") == {"1g.24gb": 4}
    assert standard_map(gb200, "all-1g.24gb.me") == {"1g.24gb+me": 1}
    assert standard_map(gb200, "all-1g.23gb") == {"1g.23gb": 7}
    assert standard_map(h200, "all-1g.35gb") == {"1g.35gb": 4}
    assert standard_map(gb300, "all-1g.35gb") == {"1g.35gb": 7}
    assert "all-1g.35gb" not in standard_names(h200_nvl)
    with pytest.raises(MigoptError, match=r"'all-1g\.35gb' is not a standard MIG config of H200-NVL"):
        standard_map(h200_nvl, "all-1g.35gb")


def test_the_new_devices_get_nvidias_names() -> None:
    rtx, b300 = CATALOG.model("RTX-PRO-6000"), CATALOG.model("B300")
    assert set(standard_names(rtx)) == {
        "all-disabled", "all-enabled", "all-balanced", "all-1g.24gb", "all-1g.24gb.me", "all-1g.24gb.gfx",
        "all-1g.24gb.me.all", "all-1g.24gb-me", "all-2g.48gb", "all-2g.48gb.gfx", "all-2g.48gb.me.all",
        "all-2g.48gb-me", "all-4g.96gb", "all-4g.96gb.gfx",
    }  # fmt: skip
    assert standard_map(rtx, "all-balanced") == {"1g.24gb": 2, "2g.48gb": 1}
    assert standard_map(rtx, "all-1g.24gb-me") == {"1g.24gb-me": 4}
    assert standard_map(b300, "all-balanced") == {"1g.34gb": 2, "2g.67gb": 1, "3g.135gb": 1}
    assert standard_map(b300, "all-7g.269gb") == {"7g.269gb": 1}


@pytest.mark.parametrize(
    ("key", "name"),
    [("A100-40GB", "all-1g.10gb"), ("A100-80GB", "all-1g.10gb"), ("H100-94GB", "all-1g.24gb")],
)
def test_shared_names_mean_each_models_own_count(key: str, name: str) -> None:
    model = CATALOG.model(key)
    [profile] = standard_map(model, name) or {}
    assert standard_map(model, name) == {profile: model.profile(profile).max_count}


def test_mig_off_and_on_without_instances_and_unknown_names() -> None:
    model = CATALOG.model("A30")
    assert standard_map(model, "all-disabled") is None
    assert standard_map(model, "all-enabled") == {}
    for name in ("all-1g.5gb", "all-3g.39gb", "team-split", ""):  # another model's, a drifted name, no such name
        with pytest.raises(MigoptError, match="is not a standard MIG config of A30") as err:
            standard_map(model, name)
        assert "\n" not in str(err.value) and "all-balanced" in str(err.value)


def test_drifted_names_in_nvidias_file_log_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        standard_names(CATALOG.model("GB200"))
        standard_config(list(CATALOG.models))
    assert "driver-name-drift" not in caplog.text


def test_the_packaged_file_is_one_both_readers_take_and_names_whole_gpus_only() -> None:
    assert set(parse_config(TEXT).mig_configs) == set(NVIDIA.configs) == set(operator_default().mig_configs)
    assert all(entry.devices is None for entries in NVIDIA.configs.values() for entry in entries)  # `devices: all`


# --- the catalog is NVIDIA's ----------------------------------------------------------------------------------


def test_the_catalog_knows_every_gpu_nvidias_file_names_and_no_other() -> None:
    filtered = {
        f.upper()
        for entries in NVIDIA.configs.values()
        for entry in entries
        for f in entry.device_filter
    }  # fmt: skip
    ours = {pci.upper() for model in CATALOG.models for pci in model.pci_device_ids}
    assert filtered == ours


def test_the_catalog_knows_every_profile_nvidias_file_names() -> None:
    named = {p for entries in NVIDIA.configs.values() for entry in entries for p in entry.mig_devices or {}}
    assert all(any(m.has_profile(p) for m in CATALOG.models) for p in named), named


@pytest.mark.parametrize("model", CATALOG.models, ids=lambda m: m.key)
def test_each_catalog_profile_has_nvidias_all_config_with_its_maximum_count(model: GpuModel) -> None:
    for profile in model.profiles:
        name = config_name(profile.name)
        if (model.key, profile.name) in DEPARTURES:
            assert nvidia_target(model, name) == "none", name
            continue
        assert nvidia_target(model, name) == {profile.name: profile.max_count}, name
        assert max_alone(model, profile.name) == profile.max_count, name  # and the placements allow that many


def test_every_departure_is_still_one() -> None:
    for key, profile in DEPARTURES:
        assert CATALOG.model(key).has_profile(profile)


@pytest.mark.parametrize("model", CATALOG.models, ids=lambda m: m.key)
def test_all_balanced_is_what_mig_parteds_generator_picks_from_the_catalog(model: GpuModel) -> None:
    assert nvidia_target(model, "all-balanced") == balanced_by_mig_parted_rule(model)


@pytest.mark.parametrize("model", CATALOG.models, ids=lambda m: m.key)
def test_nvidias_file_treats_every_pci_id_of_a_model_alike(model: GpuModel) -> None:
    """A model is one row of the catalog only if the operator's file never tells its boards apart."""
    for name in NVIDIA.configs:
        seen = []
        for pci in model.pci_device_ids:
            board = model.model_copy(update={"pci_device_ids": (pci,)})
            seen.append(targets(NVIDIA.select(name), [(0, board)]).get(0, "none"))
        assert all(s == seen[0] for s in seen), (name, seen)
