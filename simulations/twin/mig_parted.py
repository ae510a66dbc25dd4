"""The node-side `nvidia-mig-parted` that mig-manager runs: select, assert and apply on a twin node's GPUs.

It follows spec §2.2 (which GPUs an entry matches), §2.4 (mode phase, then per GPU: equal maps are skipped
untouched, otherwise clear and create in mig-parted's orderings with the driver's placement), §2.5 (assert)
and §2.6 (a profile unknown to every GPU of the node clears the GPU and succeeds; known only to another
model it fails). Destroying an instance a pod holds fails with NVML's "In use by another client".

Files are read with the twin's own reader (`mig_parted_reader`), never the controller's parser: a format bug
the controller makes must fail here as it would on a real node, not be accepted by both sides.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

from pydantic import BaseModel, ConfigDict

from simulations.placement import ALL_ORDERINGS_FAILED, apply_map
from simulations.twin.mig_parted_reader import Entry, MigPartedFile, ReadError, parse_profile, read
from simulations.twin.state import TwinGpu, TwinInstance, TwinNode
from solver.catalog import GpuModel, load_catalog
from solver.geometry import Instance

IN_USE = "In use by another client"
ORDERINGS_FAILED = f"error setting MIGConfig: {ALL_ORDERINGS_FAILED}"


class MigPartedError(Exception):
    """A mig-parted invocation failed; the message is what mig-manager logs after "Error: "."""


Pair = tuple[Entry, TwinGpu]


@lru_cache(maxsize=8)
def _parsed(text: str) -> MigPartedFile:
    """The file is re-read at every run but rarely changes: read each distinct text once."""
    return read(text)


def select_config(text: str | None, name: str) -> list[Entry]:
    """`assert --valid-config -c NAME`: the file parses and names the config (an empty name only if it has one)."""
    if text is None:
        raise MigPartedError("error parsing config file: the mig-parted ConfigMap does not exist")
    try:
        config = _parsed(text)
    except ReadError as err:
        raise MigPartedError(f"error parsing config file: {err}") from None
    try:
        return list(config.select(name))
    except ReadError as err:
        raise MigPartedError(str(err)) from None


def walk(entries: Sequence[Entry], node: TwinNode) -> list[Pair]:
    """(entry, GPU) pairs in mig-parted's visiting order: entries in file order, GPUs in index order."""
    pairs: list[Pair] = []
    gpus = sorted(node.gpus, key=lambda g: g.index)
    for entry in entries:
        for gpu in gpus:
            if entry.applies_to(gpu.index, gpu.gpu_model):
                pairs.append((entry, gpu))
    return pairs


def resolve(model: GpuModel, name: str) -> str | None:
    """The catalog name of `name` on this model (drifted names and `1c.1g.5gb` spellings included), or None.

    Other spellings match as go-nvlib's `Matches` does: on C, G, GB and the attribute sets (so `01g.5gb` is
    `1g.5gb`, and `4c.2g.10gb`, though valid in a file, matches nothing)."""
    if model.has_profile(name):
        return model.profile(name).name
    try:
        wanted = parse_profile(name)
    except ReadError:
        return None
    return next((p.name for p in model.profiles if parse_profile(p.name) == wanted), None)


class _Desired(BaseModel):
    model_config = ConfigDict(frozen=True)

    counts: dict[str, int]  # catalog names; zero counts kept (they make equality fail, spec §2.5)
    unknown_to_node: str | None  # a name no GPU of the node knows: the expansion is empty (spec §2.6)
    missing_here: str | None  # a name this GPU lacks but another GPU of the node has


def _desired(entry: Entry, gpu: TwinGpu, node: TwinNode) -> _Desired:
    names = entry.mig_devices or {}
    for name in names:
        if all(resolve(g.gpu_model, name) is None for g in node.gpus):
            return _Desired(counts={}, unknown_to_node=name, missing_here=None)
    counts: Counter[str] = Counter()
    missing: str | None = None
    for name, count in names.items():
        resolved = resolve(gpu.gpu_model, name)
        if resolved is None:
            missing = missing or name
        else:
            counts[resolved] += count
    return _Desired(counts=dict(counts), unknown_to_node=None, missing_here=missing)


def _map_equals(entry: Entry, gpu: TwinGpu, node: TwinNode) -> bool:
    desired = _desired(entry, gpu, node)
    if desired.unknown_to_node or desired.missing_here:
        return False
    return desired.counts == gpu.mig_devices


def pair_applied(entry: Entry, gpu: TwinGpu, node: TwinNode) -> bool:
    """This entry's mode, and for MIG-enabled entries its exact map, hold on this GPU."""
    if gpu.mig_enabled != entry.mig_enabled:
        return False
    return not entry.mig_enabled or _map_equals(entry, gpu, node)


def is_applied(entries: Sequence[Entry], node: TwinNode) -> bool:
    """`assert`: every GPU of the node matched by some entry, and every matched pair applied."""
    pairs = walk(entries, node)
    if {g.index for _, g in pairs} != {g.index for g in node.gpus}:
        return False
    return all(pair_applied(e, g, node) for e, g in pairs)


def mode_change_needed(pairs: Sequence[Pair]) -> bool:
    return any(gpu.mig_enabled != entry.mig_enabled for entry, gpu in pairs)


def _in_use(gpu: TwinGpu) -> str | None:
    held = next((i for i in gpu.instances if i.pod), None)
    if held is None:
        return None
    return (
        f"GPU {gpu.index}: Error clearing MigConfig: error destroying GPU instance for profile "
        f"'{held.profile}' at {held.start}: {IN_USE}"
    )


def apply_mode(entry: Entry, gpu: TwinGpu) -> None:
    """Phase A for one matched GPU: clear it if MIG is on, then set the entry's mode (raises when busy)."""
    if gpu.mig_enabled:
        problem = _in_use(gpu)
        if problem:
            raise MigPartedError(f"{problem}: error setting MIG mode")
        gpu.instances = []
    gpu.mig_enabled = entry.mig_enabled


def needs_config(entry: Entry, gpu: TwinGpu, node: TwinNode) -> bool:
    """Phase B does work on this GPU (its map differs); otherwise the GPU is skipped untouched."""
    return entry.mig_enabled and gpu.mig_enabled and not _map_equals(entry, gpu, node)


@lru_cache(maxsize=1024)
def _placed(model: str, devices: tuple[tuple[str, int], ...]) -> tuple[tuple[Instance, ...] | None, tuple[str, ...]]:
    """`apply_map` on a cleared GPU of the catalog model `model`, once per map (in its order: it breaks ties in the
    creation order): mig-parted rebuilds thousands of GPUs into a few hundred distinct maps."""
    layout, log = apply_map(load_catalog().model(model), dict(devices))
    return None if layout is None else tuple(layout), tuple(log)


def apply_config(entry: Entry, gpu: TwinGpu, node: TwinNode) -> list[str]:
    """Phase B for one pair: returns the log lines; raises `MigPartedError` when the GPU could not be set."""
    if not entry.mig_enabled:
        if gpu.mig_enabled:
            raise MigPartedError("MIG mode is currently enabled, but the configuration specifies it should be disabled")
        return []
    if not gpu.mig_enabled:
        raise MigPartedError("unable to apply MIG config with MIG mode disabled")
    if not needs_config(entry, gpu, node):
        return []
    problem = _in_use(gpu)
    if problem:
        raise MigPartedError(f"{problem}: {ORDERINGS_FAILED}")
    desired = _desired(entry, gpu, node)
    gpu.instances = []
    if desired.unknown_to_node:  # the expansion came back empty: nothing to create, and no error
        return [f"GPU {gpu.index}: MIG profile {desired.unknown_to_node} unknown on this node; cleared"]
    if desired.missing_here:
        raise MigPartedError(
            f"GPU {gpu.index}: MIG profile {desired.missing_here} not found on this GPU: {ORDERINGS_FAILED}"
        )
    layout, log = _placed(gpu.model, tuple((name, count) for name, count in desired.counts.items() if count))
    if layout is None:
        reason = log[-2] if len(log) > 1 else "no ordering succeeded"
        raise MigPartedError(f"GPU {gpu.index}: {reason}: {ORDERINGS_FAILED}")
    gpu.instances = [TwinInstance(profile=i.profile, start=i.start) for i in layout]
    return [f"GPU {gpu.index}: MIG configuration applied successfully"]
