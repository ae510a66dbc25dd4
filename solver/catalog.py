"""The MIG hardware catalog: GPU models, their GPU-instance profiles and allowed placements.

The facts live in `data/catalog.yaml` (one file, readable beside the spec's tables); this module loads them
into validated models and resolves the many names a GPU model goes by in the field.
"""

from __future__ import annotations

import logging
import re
from functools import cache
from importlib import resources

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from solver.errors import MigoptError
from solver.memo import MEMO_IGNORED, memo
from solver.profiles import parse_profile

log = logging.getLogger(__name__)

_SAFE_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader (about ten times faster on the catalog, read by every command) where PyYAML has it."""


class Placement(BaseModel):
    """Where a GPU instance sits: `start` and `size` in memory-slice units (NVML's placement)."""

    model_config = ConfigDict(frozen=True, ignored_types=MEMO_IGNORED)

    start: int
    size: int

    @property
    def mask(self) -> int:
        """The memory slices this placement occupies, as a bit mask."""
        return ((1 << self.size) - 1) << self.start


class Profile(BaseModel):
    """One GPU-instance profile of one GPU model."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, ignored_types=MEMO_IGNORED)

    name: str
    id: int = Field(description="NVML profile ID")
    compute_slices: int = Field(validation_alias="g", ge=1)
    memory_slices: int = Field(validation_alias="mem", ge=1)
    memory_mib: int = Field(validation_alias="mib", ge=1)
    multiprocessors: int | None = Field(default=None, validation_alias="sm")
    max_count: int = Field(validation_alias="max", ge=1)
    starts: tuple[int, ...]
    drift: tuple[str, ...] = ()

    @property
    def placements(self) -> tuple[Placement, ...]:
        return tuple(Placement(start=s, size=self.memory_slices) for s in self.starts)

    @model_validator(mode="after")
    def _name_matches_slices(self) -> Profile:
        parsed = parse_profile(self.name)
        if not parsed.is_gpu_instance or parsed.gpu_slices != self.compute_slices:
            raise ValueError(f"profile {self.name}: name disagrees with g={self.compute_slices}")
        return self


_PROFILE_FACTS = ("id", "g", "mem", "mib", "sm", "max", "starts")
"""The data file's per-profile keys a model's `unverified` list may name (as `profiles.<key>`)."""


class GpuModel(BaseModel):
    """A GPU model and everything it can be split into; `unverified` lists the facts no primary source confirmed
    (the one place they are marked: `migopt catalog` shows them)."""

    model_config = ConfigDict(frozen=True, ignored_types=MEMO_IGNORED)

    key: str
    product: str
    aliases: tuple[str, ...]
    gfd_products: tuple[str, ...]
    nvml_names: tuple[str, ...]
    pci_device_ids: tuple[str, ...]
    memory_gb: int
    compute_slices: int
    memory_slices: int
    unverified: tuple[str, ...] = ()
    profiles: tuple[Profile, ...]

    @model_validator(mode="after")
    def _unverified_names_facts(self) -> GpuModel:
        known = {"product", "aliases", "gfd_products", "nvml_names", "pci_device_ids", "memory_gb"}
        known |= {f"profiles.{key}" for key in _PROFILE_FACTS}
        unknown = sorted(set(self.unverified) - known)
        if unknown:
            raise ValueError(f"model {self.key}: unverified names no fact: {', '.join(unknown)}")
        return self

    @model_validator(mode="after")
    def _profiles_fit(self) -> GpuModel:
        names = [p.name for p in self.profiles]
        if len(set(names)) != len(names) or len({p.id for p in self.profiles}) != len(names):
            raise ValueError(f"model {self.key}: duplicate profile name or id")
        for p in self.profiles:
            if p.compute_slices > self.compute_slices:
                raise ValueError(f"model {self.key}: {p.name} has more compute slices than the GPU")
            if any(s < 0 or s + p.memory_slices > self.memory_slices for s in p.starts):
                raise ValueError(f"model {self.key}: {p.name} placement outside {self.memory_slices} memory slices")
        return self

    @memo
    def _by_name(self) -> dict[str, Profile]:
        return {p.name: p for p in self.profiles}

    @memo
    def _drift(self) -> dict[str, Profile]:
        return {alias: p for p in self.profiles for alias in p.drift}

    @property
    def profile_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.profiles)

    def has_profile(self, name: str) -> bool:
        return name in self._by_name or name in self._drift

    def resolve(self, name: str) -> Profile | None:
        """The profile a name means on this model, drifted names included, without `profile`'s warning: for
        files (NVIDIA's own) that name drifted profiles on purpose. None for a name the model lacks."""
        return self._by_name.get(name) or self._drift.get(name)

    def profile(self, name: str) -> Profile:
        """Resolve a profile name on this model; a driver's drifted name maps to the catalog's with a warning."""
        found = self._by_name.get(name)
        if found is not None:
            return found
        parse_profile(name)  # a malformed string gets the grammar's error, not "unknown"
        drifted = self._drift.get(name)
        if drifted is not None:
            log.warning("profile=%s model=%s mapped_to=%s reason=driver-name-drift", name, self.key, drifted.name)
            return drifted
        raise MigoptError(f"unknown MIG profile {name!r} for {self.key}; known: {', '.join(self.profile_names)}")


class Catalog(BaseModel):
    """Every GPU model migopt knows, with a lookup by any of its names."""

    model_config = ConfigDict(frozen=True, ignored_types=MEMO_IGNORED)

    models: tuple[GpuModel, ...]

    @memo
    def _index(self) -> dict[str, GpuModel]:
        index: dict[str, GpuModel] = {}
        for model in self.models:
            names = (model.key, model.product, *model.aliases, *model.gfd_products, *model.nvml_names)
            for name in names:
                index.setdefault(_normalise(name), model)
            for pci in model.pci_device_ids:
                index.setdefault(_normalise(pci), model)
                index.setdefault(_normalise(pci[:6]), model)  # device id without the vendor half
        return index

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(m.key for m in self.models)

    @memo
    def _by_spelling(self) -> dict[str, GpuModel]:
        """Names already looked up, as written: a snapshot repeats a few spellings over thousands of GPUs."""
        return {}

    def model(self, name: str) -> GpuModel:
        """Find a model by short alias, GFD product label, NVML name or PCI device id (`0x20B010DE` or `0x20B0`)."""
        found = self._by_spelling.get(name)
        if found is None:
            found = self._index.get(_normalise(name))
            if found is None:
                raise MigoptError(f"unknown GPU model {name!r}; known: {', '.join(self.keys)}")
            if len(self._by_spelling) < _SPELLINGS_KEPT:
                self._by_spelling[name] = found
        return found


_SPELLINGS_KEPT = 4096
"""Spellings `Catalog.model` remembers at most: names come from files and the cluster, so they are bounded."""


def _normalise(name: str) -> str:
    text = name.strip().lower()
    if re.fullmatch(r"0x[0-9a-f]+", text):
        return text
    return re.sub(r"[\s_]+", "-", text.removeprefix("nvidia").strip(" -_"))


@cache
def load_catalog() -> Catalog:
    """Load and validate the catalog shipped with the package (once per process)."""
    text = resources.files("solver").joinpath("data/catalog.yaml").read_text(encoding="utf-8")
    raw = yaml.load(text, Loader=_SAFE_LOADER)  # a safe loader: libyaml's when PyYAML has it
    try:
        return Catalog(models=tuple(GpuModel(key=key, **body) for key, body in raw["models"].items()))
    except ValidationError as err:  # a broken data file is a packaging bug; say where
        raise MigoptError(f"invalid catalog data: {err.errors()[0]['msg']}") from err


def get_model(name: str) -> GpuModel:
    """Shorthand for `load_catalog().model(name)`."""
    return load_catalog().model(name)
