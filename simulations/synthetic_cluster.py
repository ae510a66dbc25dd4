"""Seeded random cluster snapshots, so solver benchmarks and property tests need no real cluster.

`generate_snapshot(ClusterSpec(...))` returns plain data in the shape `solver.snapshot.parse_snapshot` reads
(`{"nodes": [...], "pods": [...], "running": [...]}`). Every layout is a catalog-feasible one (a maximal layout,
sometimes with a few instances dropped), and the same spec always gives the same dict, so a benchmark or a
failing property test can be reproduced from its spec alone.
"""

from __future__ import annotations

import random
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from solver.catalog import GpuModel, Profile, load_catalog
from solver.geometry import maximal_layouts
from solver.profiles import resource_name
from solver.snapshot import PRODUCT_LABEL

POOL_LABEL = "pool"
TAINT = {"key": "dedicated", "value": "infer", "effect": "NoSchedule"}
TOLERATION = {"key": "dedicated", "operator": "Equal", "value": "infer", "effect": "NoSchedule"}

# Relative weight of a pending pod's size class (compute slices): small profiles dominate real demand, while the
# fragmented scenario asks mostly for big ones, which scattered 1g instances block.
_DEMAND_WEIGHTS: dict[int, float] = {1: 8.0, 2: 4.0, 3: 2.0, 4: 1.0, 7: 1.0}
_FRAGMENTED_DEMAND_WEIGHTS: dict[int, float] = {1: 0.5, 2: 0.5, 3: 4.0, 4: 3.0, 7: 3.0}
_FRAGMENTED_LAYOUT_SHARE = 0.85  # GPUs given a 1g-only layout in fragmented mode; the rest any maximal layout
_DROP_CHANCE = 0.2  # GPUs that lose one or two instances of their maximal layout (partly configured GPUs)

_Layout = tuple[tuple[str, int], ...]
"""A layout as (profile, start) pairs: cheaper to copy tens of thousands of times than `Instance` models."""


class ClusterSpec(BaseModel):
    """What kind of cluster to generate; every random choice is drawn from `random.Random(seed)`.

    Fractions are per-item chances, not exact counts: `taint_fraction` is both the chance a node is tainted and
    the chance a pending pod tolerates the taint; `used_fraction` the chance an existing instance is held.
    """

    model_config = ConfigDict(extra="forbid")

    nodes: int = Field(default=10, ge=0)
    gpus_per_node: int = Field(default=8, ge=0)
    models: list[str] = Field(default=["A100-40GB", "A100-80GB", "H100-80GB"], min_length=1)
    used_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    empty_gpu_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    pending_pods: int = Field(default=50, ge=0)
    multi_device_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    selector_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    pools: int = Field(default=4, ge=1)
    taint_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    priorities: list[int] = Field(default=[0, 100, 1000], min_length=1)
    fragmented: bool = False
    seed: int = 0

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        """Resolve aliases to catalog keys up front, so an unknown model fails at spec time, not mid-generation."""
        catalog = load_catalog()
        return [catalog.model(m).key for m in models]


@cache
def _layouts(model_key: str, one_slice_only: bool) -> tuple[_Layout, ...]:
    """Maximal layouts of a model over its plain (no `+me`) profiles; 1g profiles only when `one_slice_only`."""
    model = load_catalog().model(model_key)
    names = [p.name for p in _plain_profiles(model) if not one_slice_only or p.compute_slices == 1]
    return tuple(tuple((i.profile, i.start) for i in layout) for layout in maximal_layouts(model, names))


def _plain_profiles(model: GpuModel) -> list[Profile]:
    """Profiles without attributes: `+me` variants add little to benchmarks and complicate counting."""
    return [p for p in model.profiles if "+" not in p.name]


def generate_snapshot(spec: ClusterSpec) -> dict[str, Any]:
    """A random snapshot for the spec: deterministic in `spec` (including its seed), valid for `parse_snapshot`."""
    rng = random.Random(spec.seed)
    catalog = load_catalog()
    node_width = max(5, len(str(spec.nodes)))
    nodes: list[dict[str, Any]] = []
    running: list[dict[str, Any]] = []
    present: set[str] = set()
    for n in range(spec.nodes):
        key = rng.choice(spec.models)
        present.add(key)
        labels = {POOL_LABEL: f"pool-{n % spec.pools}", PRODUCT_LABEL: catalog.model(key).gfd_products[0]}
        taints = [dict(TAINT)] if rng.random() < spec.taint_fraction else []
        gpus = [_gpu(rng, spec, key, index, running) for index in range(spec.gpus_per_node)]
        nodes.append({"name": f"node-{n + 1:0{node_width}d}", "labels": labels, "taints": taints, "gpus": gpus})
    models = sorted(present) if present else sorted(set(spec.models))
    return {"nodes": nodes, "pods": _pending_pods(rng, spec, models), "running": running}


def _gpu(rng: random.Random, spec: ClusterSpec, key: str, index: int, running: list[dict[str, Any]]) -> dict[str, Any]:
    """One GPU: a random maximal layout (maybe trimmed), some instances held by new running pods."""
    if rng.random() < spec.empty_gpu_fraction:
        return {"index": index, "model": key, "instances": []}
    one_slice = spec.fragmented and rng.random() < _FRAGMENTED_LAYOUT_SHARE
    layout = list(rng.choice(_layouts(key, one_slice) or _layouts(key, False)))
    if len(layout) > 1 and rng.random() < _DROP_CHANCE:
        for _ in range(rng.randint(1, min(2, len(layout) - 1))):
            layout.pop(rng.randrange(len(layout)))
    used_count = sum(rng.random() < spec.used_fraction for _ in layout)
    if one_slice:
        used = _scattered(rng, layout, used_count, load_catalog().model(key).memory_slices // 2)
    else:
        used = set(rng.sample(range(len(layout)), used_count))
    instances: list[dict[str, Any]] = []
    for position, (profile, start) in enumerate(layout):
        instance: dict[str, Any] = {"profile": profile, "start": start}
        if position in used:
            name = f"run/r-{len(running) + 1:06d}"
            instance["pod"] = name
            running.append({"name": name, "priority": rng.choice(spec.priorities)})
        instances.append(instance)
    return {"index": index, "model": key, "instances": instances}


def _scattered(rng: random.Random, layout: list[tuple[str, int]], count: int, half: int) -> set[int]:
    """Pick `count` positions alternating between the GPU's memory halves, so few used 1g instances block 3g/4g."""
    lower = [i for i, (_, start) in enumerate(layout) if start < half]
    upper = [i for i, (_, start) in enumerate(layout) if start >= half]
    rng.shuffle(lower)
    rng.shuffle(upper)
    sides = [lower, upper] if rng.random() < 0.5 else [upper, lower]
    chosen: set[int] = set()
    turn = 0
    while len(chosen) < count:
        side = sides[turn % 2] or sides[(turn + 1) % 2]
        chosen.add(side.pop())
        turn += 1
    return chosen


def _pending_pods(rng: random.Random, spec: ClusterSpec, models: list[str]) -> list[dict[str, Any]]:
    """Pending pods asking for plain profiles of the cluster's models, small ones common unless fragmented."""
    catalog = load_catalog()
    by_size: dict[int, set[str]] = {}
    for key in models:
        for profile in _plain_profiles(catalog.model(key)):
            by_size.setdefault(profile.compute_slices, set()).add(profile.name)
    sizes = sorted(by_size)
    weights = _FRAGMENTED_DEMAND_WEIGHTS if spec.fragmented else _DEMAND_WEIGHTS
    size_weights = [weights.get(s, 1.0) for s in sizes]
    choices = {s: sorted(by_size[s]) for s in sizes}

    def draw() -> str:
        size = rng.choices(sizes, size_weights)[0]
        return rng.choice(choices[size])

    width = max(6, len(str(spec.pending_pods)))
    pods: list[dict[str, Any]] = []
    for n in range(spec.pending_pods):
        first = draw()
        requests = {resource_name(first): 1}
        if rng.random() < spec.multi_device_fraction:
            second = first if rng.random() < 0.5 else draw()
            requests[resource_name(second)] = requests.get(resource_name(second), 0) + 1
        pod: dict[str, Any] = {
            "name": f"pend/p-{n + 1:0{width}d}",
            "requests": requests,
            "priority": rng.choice(spec.priorities),
        }
        if rng.random() < spec.selector_fraction:
            pod["node_selector"] = {POOL_LABEL: f"pool-{rng.randrange(spec.pools)}"}
        if spec.taint_fraction > 0 and rng.random() < spec.taint_fraction:
            pod["tolerations"] = [dict(TOLERATION)]
        pods.append(pod)
    return pods
