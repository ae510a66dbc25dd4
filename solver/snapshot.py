"""The cluster snapshot the planner reads: nodes, their GPUs and MIG layouts, running and pending pods.

The shape is the architecture guide's contract (`migopt plan --snapshot FILE`), extended with what planning
needs to be safe: taints, affinity, tolerations, running pods' priorities and whether they may be evicted.
Parsing validates everything a user can get wrong and reports it on one line naming the node, GPU or pod.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from functools import cache, lru_cache
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from solver.catalog import GpuModel, load_catalog
from solver.collector import collector_paused
from solver.errors import MigoptError, problem_message
from solver.geometry import Instance, check_layout
from solver.memo import MEMO_IGNORED, memo
from solver.profiles import MIG_RESOURCE_PREFIX, profile_from_resource
from solver.protection import Protection

GPU_RESOURCE = "nvidia.com/gpu"
PRODUCT_LABEL = "nvidia.com/gpu.product"
STRATEGY_LABEL = "nvidia.com/mig.strategy"

MAX_GPUS_PER_NODE = 128
"""GPUs one node may have (8 on a DGX/HGX board today): a snapshot file's node with more is an error."""
MAX_DEVICES_PER_REQUEST = 1024
"""Devices of one resource a pending pod's request is read as, at most: a larger count (however large) is
clamped to this, which is still more than any node can hold (`MAX_GPUS_PER_NODE` GPUs of at most 7 instances
each), so the pod stays pending as unplaceable, its reason saying why, and the solver's coefficients stay far
inside the 64-bit integers CP-SAT accepts."""
PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1
"""Kubernetes priorities are int32; a priority beyond is clamped into this range (which keeps their order)."""


def clamp_priority(priority: int) -> int:
    return max(PRIORITY_MIN, min(PRIORITY_MAX, priority))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ignored_types=MEMO_IGNORED)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy, without the values cached from the fields (`memo`): an update would leave them
        stale, and planning reads them."""
        copied = super().model_copy(update=update, deep=deep)
        if update:
            for name in _cached_properties(type(self)):
                copied.__dict__.pop(name, None)
        return copied


@cache
def _cached_properties(cls: type) -> tuple[str, ...]:
    return tuple(name for klass in cls.__mro__ for name, value in vars(klass).items() if isinstance(value, memo))


@pydantic_dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class InstanceState:
    """One MIG instance of a GPU's current layout; `pod` names the pod holding it, absent when free.

    A slotted dataclass, not a model: a snapshot holds one per instance (300,000 at 10,000 nodes), and a model
    keeps a `__dict__` and a set of the fields given for each, which made a fifth of the parsed snapshot's memory
    and of the time parsing it. Copy one with `dataclasses.replace`, which validates the copy."""

    profile: str
    start: int = Field(ge=0)
    pod: str | None = None


class GpuState(_Strict):
    index: int = Field(ge=0)
    model: str
    instances: list[InstanceState] = Field(default_factory=list)

    @memo
    def gpu_model(self) -> GpuModel:
        return load_catalog().model(self.model)

    @property
    def layout(self) -> list[Instance]:
        return [Instance(profile=self.gpu_model.profile(i.profile).name, start=i.start) for i in self.instances]

    # The facts below are read for every GPU many times per plan; the model is frozen, so each is computed once,
    # and GPUs repeat a few layouts, so each layout's are computed once (`_layout_facts`).

    @memo
    def layout_shape(self) -> LayoutShape:
        """The model as written and each instance as (profile as written, start, held): all the facts below read."""
        return self.model, tuple([(i.profile, i.start, bool(i.pod)) for i in self.instances])

    @memo
    def layout_pairs(self) -> tuple[tuple[str, int], ...]:
        """The current layout as (profile, start) pairs, start order."""
        return _layout_facts(self.layout_shape)[0]

    @memo
    def mig_devices_items(self) -> tuple[tuple[str, int], ...]:
        """`mig_devices` as (profile, count) pairs, catalog order: hashable, and shared instead of rebuilt."""
        return _layout_facts(self.layout_shape)[1]

    @property
    def mig_devices(self) -> dict[str, int]:
        """The current layout as a `mig-devices` map (catalog order): what mig-parted compares a target with."""
        return dict(self.mig_devices_items)

    @memo
    def free_instances(self) -> tuple[tuple[str, int], ...]:
        """The instances no pod holds, as (catalog profile name, start) pairs, start order."""
        return _layout_facts(self.layout_shape)[2]

    @memo
    def holders(self) -> frozenset[str]:
        """The pods holding an instance of this GPU."""
        return frozenset([i.pod for i in self.instances if i.pod])


LayoutShape = tuple[str, tuple[tuple[str, int, bool], ...]]
Pairs = tuple[tuple[str, int], ...]


@lru_cache(maxsize=65536)
def _layout_facts(shape: LayoutShape) -> tuple[Pairs, Pairs, Pairs]:
    """A layout's (profile, start) pairs in start order, its (profile, count) pairs in catalog order, and its free
    instances' (profile, start) pairs in start order, profiles by their catalog names. A snapshot of thousands of
    GPUs holds a few thousand layouts: the answers are shared, and a bounded cache keeps a long-running
    controller's memory flat."""
    model = load_catalog().model(shape[0])
    named = [(model.profile(profile).name, start, held) for profile, start, held in shape[1]]
    counts = Counter(name for name, _, _ in named)
    return (
        tuple(sorted(((name, start) for name, start, _ in named), key=lambda pair: pair[1])),
        tuple((p.name, counts[p.name]) for p in model.profiles if counts[p.name]),
        tuple(sorted(((name, start) for name, start, held in named if not held), key=lambda pair: pair[1])),
    )


class Taint(_Strict):
    key: str
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


class Toleration(_Strict):
    key: str = ""
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""


class NodeSelectorRequirement(_Strict):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: list[str] = Field(default_factory=list)


class NodeSelectorTerm(_Strict):
    """Requirements that must all hold; a pod's terms are alternatives (Kubernetes' required node affinity)."""

    match_expressions: list[NodeSelectorRequirement] = Field(default_factory=list, alias="matchExpressions")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, ignored_types=MEMO_IGNORED)


class NodeState(_Strict):
    name: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    allocatable: dict[str, int] = Field(default_factory=dict)
    taints: list[Taint] = Field(default_factory=list)
    unschedulable: bool = False
    gpus: list[GpuState] = Field(default_factory=list, max_length=MAX_GPUS_PER_NODE)
    unmanaged: str | None = Field(
        default=None,
        description="why migopt must not change this node's GPUs (outside the managed-nodes selector, GPUs "
        "managed by NVIDIA's DRA driver); None when it may. Its free instances still serve pending pods.",
    )

    @memo
    def strategy(self) -> Literal["mixed", "single"]:
        """The device plugin's MIG strategy on this node (GFD's label; `mixed` when absent). Remembered: planning
        asks it of every node hundreds of thousands of times (filters, resource keys, repairs, checks)."""
        return "single" if self.labels.get(STRATEGY_LABEL) == "single" else "mixed"


class RunningPod(_Strict):
    """A pod holding MIG instances: what evicting it costs and whether it may be evicted at all.

    `protection` says why a pod may not be evicted; `evictable` stays (files and code written before reasons
    existed) and always agrees with it: a reason makes the pod not evictable, and `evictable: false` without
    one gets `unspecified`. Contradicting both (`evictable: true` with a reason) is an error.
    """

    name: str
    priority: int = 0
    evictable: bool = True
    protection: Protection | None = None
    uid: str | None = Field(default=None, description="the API's metadata.uid: which incarnation of the name")

    @model_validator(mode="after")
    def _flag_agrees_with_reason(self) -> RunningPod:
        """Also clamps the priority to int32 (here rather than in a validator of its own: one call less for each
        of a cluster's tens of thousands of running pods)."""
        # frozen: the derived half is set as validation finishes, before anyone can see the instance
        if not PRIORITY_MIN <= self.priority <= PRIORITY_MAX:
            object.__setattr__(self, "priority", clamp_priority(self.priority))
        if self.protection is not None:
            if self.evictable and "evictable" in self.model_fields_set:
                raise ValueError(f"evictable: true contradicts protection {self.protection.value!r}")
            object.__setattr__(self, "evictable", False)
        elif not self.evictable:
            object.__setattr__(self, "protection", Protection.UNSPECIFIED)
        return self


class PendingPod(_Strict):
    name: str = Field(min_length=1)
    requests: dict[str, int]
    priority: int = 0
    node_selector: dict[str, str] = Field(default_factory=dict)
    node_affinity: list[NodeSelectorTerm] = Field(default_factory=list)
    tolerations: list[Toleration] = Field(default_factory=list)

    @field_validator("requests")
    @classmethod
    def _counts_positive(cls, requests: dict[str, int]) -> dict[str, int]:
        """Zero counts dropped, negative ones refused, huge ones clamped to `MAX_DEVICES_PER_REQUEST`."""
        for resource, count in requests.items():
            if count < 0:
                raise ValueError(f"negative count {count} for {resource}")
        return {r: min(c, MAX_DEVICES_PER_REQUEST) for r, c in requests.items() if c > 0}

    @field_validator("priority")
    @classmethod
    def _int32_priority(cls, priority: int) -> int:
        return clamp_priority(priority)

    @property
    def mig_requests(self) -> dict[str, int]:
        """Mixed-strategy requests as profile → count."""
        return {
            profile_from_resource(r): c for r, c in sorted(self.requests.items()) if r.startswith(MIG_RESOURCE_PREFIX)
        }

    @property
    def single_product(self) -> str | None:
        """The `<model>-MIG-<profile>` product a single-strategy request (`nvidia.com/gpu`) selects, if any."""
        product = self.node_selector.get(PRODUCT_LABEL, "")
        return product if self.requests.get(GPU_RESOURCE) and "-MIG-" in product else None


class ForecastDemand(_Strict):
    """Pods of one request shape expected to arrive soon (the controller's forecast from recent arrivals)."""

    requests: dict[str, int] = Field(min_length=1)
    count: int = Field(ge=1, le=10_000)


class ClusterSnapshot(_Strict):
    nodes: list[NodeState] = Field(default_factory=list)
    pods: list[PendingPod] = Field(default_factory=list)
    running: list[RunningPod] = Field(default_factory=list)
    forecast: list[ForecastDemand] = Field(
        default_factory=list,
        description="expected arrivals; only the proactive policy reads them, and never evicts for them",
    )

    @memo
    def running_by_name(self) -> dict[str, RunningPod]:
        return {p.name: p for p in self.running}

    def running_pod(self, name: str) -> RunningPod:
        """A pod named in a layout; pods the snapshot does not describe count as priority 0, evictable."""
        return self.running_by_name.get(name) or RunningPod(name=name)

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSnapshot:
        _check_unique([n.name for n in self.nodes], "node")
        _check_unique([p.name for p in self.pods], "pending pod")
        return self


def _check_unique(names: list[str], what: str) -> None:
    duplicated = [n for n, c in Counter(names).items() if c > 1]
    if duplicated:
        raise ValueError(f"duplicate {what} name {duplicated[0]!r}")


def split_single_product(product: str) -> tuple[GpuModel, str]:
    """`NVIDIA-A100-SXM4-40GB-MIG-1g.5gb` → (the A100-40GB model, `1g.5gb`)."""
    model_part, _, profile_part = product.rpartition("-MIG-")
    model = load_catalog().model(model_part)
    return model, model.profile(profile_part).name


def _location(data: Any, loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as `nodes[node-1].gpus[0].model`, naming items by their name where they have one."""
    parts: list[str] = []
    current = data
    for step in loc:
        if isinstance(step, int) and isinstance(current, list) and step < len(current):
            current = current[step]
            label = current.get("name", current.get("index", step)) if isinstance(current, dict) else step
            parts[-1] += f"[{label}]"
        else:
            current = current.get(step) if isinstance(current, dict) else None
            parts.append(str(step))
    return ".".join(parts)


@collector_paused
def parse_snapshot(data: Any) -> ClusterSnapshot:
    """Validate raw snapshot data (from YAML/JSON), including catalog facts, with one-line errors.

    Nodes repeat a few GPU layouts and pods a few requests, so each distinct one is checked against the catalog
    once (`_Verdicts`); every GPU and pod is still checked, and an error names the first one that fails."""
    if not isinstance(data, dict):
        raise MigoptError("snapshot: expected a mapping with 'nodes' and 'pods'")
    try:
        snapshot = ClusterSnapshot.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = _location(data, tuple(first["loc"])) or "snapshot"
        raise MigoptError(f"snapshot: {where}: {problem_message(first)}") from None
    return checked_against_catalog(snapshot)


def checked_against_catalog(snapshot: ClusterSnapshot) -> ClusterSnapshot:
    """The snapshot, once every GPU layout and pending request is known to the catalog (`parse_snapshot`'s second
    half, for a snapshot pydantic validated from JSON text directly)."""
    verdicts = _Verdicts()
    for node in snapshot.nodes:
        _check_node(node, verdicts)
    for pod in snapshot.pods:
        verdicts.check_pod(pod)
    return snapshot


class _Verdicts:
    """What the catalog says of each distinct GPU layout and pending request: the tail of the error message, or
    None when it is valid. A verdict depends only on what it is keyed by, so it is the same for every repeat."""

    def __init__(self) -> None:
        self._layouts: dict[tuple[object, ...], str | None] = {}
        self._shapes: dict[LayoutShape, str | None] = {}
        self._requests: dict[tuple[object, ...], str | None] = {}

    def layout(self, gpu: GpuState) -> str | None:
        """Keyed by the GPU's `layout_shape`, which planning reads next: which instances are held cannot matter,
        so each distinct shape is mapped to its layout's verdict once."""
        shape = gpu.layout_shape
        if shape not in self._shapes:
            key = (shape[0], tuple([(profile, start) for profile, start, _ in shape[1]]))
            if key not in self._layouts:
                self._layouts[key] = _layout_verdict(gpu)
            self._shapes[shape] = self._layouts[key]
        return self._shapes[shape]

    def check_pod(self, pod: PendingPod) -> None:
        """`check_pending_pod`, once per distinct request (what it reads: the requests and the product)."""
        key = (tuple(pod.requests.items()), pod.node_selector.get(PRODUCT_LABEL))
        if key not in self._requests:
            self._requests[key] = _request_verdict(pod)
        verdict = self._requests[key]
        if verdict is not None:
            raise MigoptError(f"snapshot: pods[{pod.name}].requests: {verdict}")


def _layout_verdict(gpu: GpuState) -> str | None:
    """The GPU's model and layout against the catalog: the error after the GPU's location, or None."""
    try:
        problems = check_layout(gpu.gpu_model, gpu.instances)
    except MigoptError as err:
        return f": {err}"
    return f".instances: infeasible layout: {problems[0]}" if problems else None


def _check_node(node: NodeState, verdicts: _Verdicts | None = None) -> None:
    _check_unique_indices(node)
    verdicts = verdicts or _Verdicts()
    for gpu in node.gpus:
        verdict = verdicts.layout(gpu)
        if verdict is not None:
            raise MigoptError(f"snapshot: nodes[{node.name}].gpus[{gpu.index}]{verdict}")


def _check_unique_indices(node: NodeState) -> None:
    indices = [g.index for g in node.gpus]
    if len(set(indices)) != len(indices):
        raise MigoptError(f"snapshot: nodes[{node.name}].gpus: duplicate GPU index")


def check_pending_pod(pod: PendingPod) -> None:
    """What `parse_snapshot` checks of one pending pod: its MIG request names profiles the catalog knows."""
    verdict = _request_verdict(pod)
    if verdict is not None:
        raise MigoptError(f"snapshot: pods[{pod.name}].requests: {verdict}")


def _request_verdict(pod: PendingPod) -> str | None:
    """What is wrong with the pod's MIG request (the message after its location), or None."""
    try:
        mig = pod.mig_requests
        product = pod.single_product
        if product is not None:
            split_single_product(product)
    except MigoptError as err:
        return str(err)
    catalog = load_catalog()
    for profile in mig:
        if not any(m.has_profile(profile) for m in catalog.models):
            return f"no GPU model in the catalog has MIG profile {profile!r}"
    if not mig and product is None:
        return (
            f"no MIG request (expected nvidia.com/mig-<profile>, or nvidia.com/gpu with a "
            f"{PRODUCT_LABEL}=<model>-MIG-<profile> node selector)"
        )
    return None
