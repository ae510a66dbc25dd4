"""What migopt may change: which nodes it manages, and which targets each GPU model may take.

Platform teams often want MIG managed on some nodes only (the rest split by hand, given whole to trainers, or
handed to NVIDIA's DRA driver), and only a few geometries their users know. Two settings say so:

- `managed_nodes`: a label selector (Kubernetes' `matchLabels`/`matchExpressions`). A node outside it is kept
  exactly as it is: never reconfigured, nothing evicted from it; its free instances still serve pending pods, and
  pods it could serve only by a change are still explained. A node the snapshot already marks `unmanaged` (the
  adapter does so for the DRA driver's nodes) stays unmanaged whatever the selector says.
- `models`: per GPU model, the profiles a target may hold and/or the whole geometries it must be one of. A GPU
  already in a layout the allowlist excludes is not changed for that; it is just never moved *into* one.

Every planner asks this module, and plan validation checks its answers, so no policy can step outside the scope.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from solver.catalog import GpuModel, get_model
from solver.demand import requirement_holds
from solver.errors import MigoptError
from solver.geometry import MigDevices, find_layout, maximal_maps
from solver.memo import MEMO_IGNORED, memo
from solver.snapshot import ClusterSnapshot, NodeSelectorRequirement, NodeState

OUTSIDE_SELECTOR = "outside the managed-nodes selector"

MapKey = tuple[tuple[str, int], ...]


class LabelSelector(BaseModel):
    """Kubernetes' label selector: every `matchLabels` pair and every expression must hold (empty: every node)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, ignored_types=MEMO_IGNORED)

    match_labels: dict[str, str] = Field(default={}, alias="matchLabels")
    match_expressions: list[NodeSelectorRequirement] = Field(default=[], alias="matchExpressions")

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            requirement_holds(r, labels) for r in self.match_expressions
        )

    def describe(self) -> str:
        """`kubectl`'s selector syntax, for notes and logs."""
        parts = [f"{k}={v}" for k, v in sorted(self.match_labels.items())]
        for r in self.match_expressions:
            if r.operator == "Exists":
                parts.append(r.key)
            elif r.operator == "DoesNotExist":
                parts.append(f"!{r.key}")
            elif r.operator in ("In", "NotIn"):
                parts.append(f"{r.key} {r.operator.lower()} ({','.join(r.values)})")
            else:
                parts.append(f"{r.key} {r.operator} {','.join(r.values)}")
        return ",".join(parts) or "<every node>"


class TargetAllowlist(BaseModel):
    """What a new target geometry of one GPU model may be; unset parts allow everything."""

    model_config = ConfigDict(extra="forbid", frozen=True, ignored_types=MEMO_IGNORED)

    profiles: list[str] | None = Field(default=None, description="profiles a target may hold, e.g. [1g.10gb, 3g.40gb]")
    geometries: list[dict[str, int]] | None = Field(
        default=None, description="whole maps a target must be one of, e.g. [{1g.10gb: 7}, {3g.40gb: 2}]"
    )


class PlanScope(BaseModel):
    """The managed nodes and the per-model allowlists (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, ignored_types=MEMO_IGNORED)

    managed_nodes: LabelSelector | None = Field(
        default=None, alias="managedNodes", description="nodes migopt may change; unset: every GPU node"
    )
    models: dict[str, TargetAllowlist] = Field(default={}, description="GPU model (catalog name) -> allowlist")

    @model_validator(mode="after")
    def _known_names(self) -> PlanScope:
        for name, allow in self.models.items():
            try:
                model = get_model(name)
                for profile in allow.profiles or []:
                    model.profile(profile)
                for geometry in allow.geometries or []:
                    if find_layout(model, dict(_key(model, geometry))) is None:
                        raise MigoptError(f"geometry {geometry} is not feasible on {model.key}")
            except MigoptError as err:
                raise ValueError(f"models[{name!r}]: {err}") from None
        return self

    @memo
    def _by_model(self) -> dict[str, _Allowed]:
        """Each allowlist with its names resolved once, by the catalog key of its model."""
        resolved = {}
        for name, allow in self.models.items():
            model = get_model(name)
            profiles = None if allow.profiles is None else frozenset(model.profile(p).name for p in allow.profiles)
            maps = None if allow.geometries is None else tuple(dict.fromkeys(_key(model, g) for g in allow.geometries))
            resolved[model.key] = _Allowed(profiles, maps)
        return resolved

    def allowlist(self, model: GpuModel) -> _Allowed | None:
        """The model's allowlist, resolved; None when its targets are not restricted."""
        return self._by_model.get(model.key)

    def unmanaged_reason(self, node: NodeState) -> str | None:
        """Why a plan must leave the node as it is; None when it may change it."""
        if node.unmanaged is not None:
            return node.unmanaged
        if self.managed_nodes is not None and not self.managed_nodes.matches(node.labels):
            return OUTSIDE_SELECTOR
        return None

    def permits(self, model: GpuModel, devices: MigDevices) -> bool:
        """Whether a GPU of `model` may be moved into `devices`."""
        allow = self.allowlist(model)
        if allow is None:
            return True
        key = _key(model, devices)
        if allow.profiles is not None and any(p not in allow.profiles for p, _ in key):
            return False
        return allow.maps is None or key in allow.maps

    def target_maps(self, model: GpuModel, demanded: Iterable[str]) -> list[MigDevices]:
        """The candidate targets for a GPU whose pending demand asks for `demanded` profiles: the maximal maps of
        those profiles, or, under a geometry allowlist, the allowed geometries holding any of them."""
        wanted = {model.profile(p).name for p in demanded}
        allow = self.allowlist(model)
        if allow is not None and allow.profiles is not None:
            wanted &= allow.profiles
        if not wanted:
            return []
        if allow is None or allow.maps is None:
            return maximal_maps(model, sorted(wanted))
        return [dict(key) for key in allow.maps if self.permits(model, dict(key)) and any(p in wanted for p, _ in key)]

    def notes(self, snapshot: ClusterSnapshot) -> list[str]:
        """What the plan JSON says about the scope it was made in."""
        notes = []
        kept = [n.name for n in snapshot.nodes if n.gpus and self.unmanaged_reason(n) is not None]
        if kept:
            shown = ", ".join(kept[:5]) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
            reasons = sorted({r for n in snapshot.nodes if n.gpus and (r := self.unmanaged_reason(n)) is not None})
            why = "; ".join(reasons)
            notes.append(f"{len(kept)} GPU nodes kept as they are, not managed by migopt ({why}): {shown}")
        for name, allow in sorted(self._by_model.items()):
            parts = []
            if allow.profiles is not None:
                parts.append(f"profiles {', '.join(sorted(allow.profiles))}")
            if allow.maps is not None:
                parts.append(f"{len(allow.maps)} allowed geometries")
            notes.append(f"targets for {name} limited to {' and '.join(parts) or 'anything'}")
        return notes


class _Allowed(NamedTuple):
    """A model's allowlist with names resolved: catalog profile names, and maps in `_key`'s form."""

    profiles: frozenset[str] | None
    maps: tuple[MapKey, ...] | None


def _key(model: GpuModel, devices: MigDevices) -> MapKey:
    return tuple(sorted((model.profile(p).name, c) for p, c in devices.items() if c))


def scoped(snapshot: ClusterSnapshot, scope: PlanScope) -> ClusterSnapshot:
    """The snapshot with every node the scope leaves alone marked `unmanaged`, so planners read one field."""
    if scope.managed_nodes is None:
        return snapshot
    nodes = [
        n if n.unmanaged is not None or (reason := scope.unmanaged_reason(n)) is None
        else n.model_copy(update={"unmanaged": reason})
        for n in snapshot.nodes
    ]  # fmt: skip
    return snapshot.model_copy(update={"nodes": nodes})
