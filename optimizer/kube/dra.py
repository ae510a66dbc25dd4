"""What NVIDIA's GPU DRA driver holds, read from resource.k8s.io/v1 ResourceSlices and ResourceClaims.

A node with a ResourceSlice of the driver `gpu.nvidia.com` has GPUs that driver manages: it creates and destroys
MIG instances itself as claims are prepared and unprepared, and its plugin destroys at startup every MIG device no
prepared claim names (`shared/spec/dynamic-mig-peers.md` §1, Lifecycle). migopt must never reconfigure such a node
(`NodeState.unmanaged`) nor evict a pod holding one of the driver's devices through an allocated claim
(`Protection.DRA_CLAIM`), and the devices such claims hold are busy in the snapshot.

Which GPU and instance an allocated device is (§1, "How devices are advertised"): the driver names a GPU
`gpu-<minor>` and a dynamic MIG device `gpu-<minor>-mig-<profile without dots>-<GI profile id>-<placement start>`,
and gives each a `type` (`gpu`, `mig`), MIG devices their `profile` and their GPU's `parentUUID`. The minor number
is the `/dev/nvidia<minor>` the kernel module assigned, which need not be the NVML index migopt's layouts use, so a
GPU is found by UUID in the node agent's report (it lists every GPU's and MIG device's UUID); the profile is the
attribute and the placement start the last number of the dynamic name (read only when the name's profile part is
that attribute without dots). A device that cannot be placed that way is taken conservatively: its whole GPU busy
when the GPU is known, every GPU of the node otherwise.

Everything here comes from the cluster and may be wrong: a slice or claim that cannot be read is skipped with a
one-line reason (the adapter logs and counts it), never a traceback. A slice of the driver whose devices cannot be
read still marks its node unmanaged: only its node and driver are needed for that.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nvidia_protocol.agent_report import NodeGpuReport
from optimizer.kube.layouts import UNATTRIBUTED_PRIORITY
from solver.errors import MigoptError, first_problem
from solver.protection import Protection
from solver.snapshot import GpuState, InstanceState, RunningPod

DRIVER = "gpu.nvidia.com"
"""NVIDIA's GPU DRA driver (its DeviceClasses select `device.driver == 'gpu.nvidia.com'`)."""
MAX_SLICE_DEVICES = 128  # the API's own limit per ResourceSlice (resource.k8s.io/v1 ResourceSliceSpec.devices)
MAX_CONSUMERS = 256  # the API's own limit on a claim's status.reservedFor
MAX_RESULTS = 4096  # far more devices than one claim can be allocated: a longer list is not a real claim
SLICES = "resourceslices"
CLAIMS = "resourceclaims"
_DYNAMIC_MIG_NAME = re.compile(r"^gpu-\d+-mig-([a-z0-9]+)-\d+-(\d+)$")


class Unreadable(MigoptError):
    """A slice or claim whose fields migopt needs are missing or of the wrong shape."""


# ---- the API's shapes, as far as they are read (strict: a number where a name belongs is an error) ---------------


class _Api(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, populate_by_name=True)


class _Meta(_Api):
    name: str = Field(min_length=1)
    namespace: str = ""


class _Attribute(_Api):
    string: str | None = None


class _Device(_Api):
    name: str = Field(min_length=1)
    attributes: dict[str, _Attribute] | None = Field(default=None, max_length=64)


class _Pool(_Api):
    name: str = Field(min_length=1)


class _SliceNode(_Api):
    driver: str
    node_name: str | None = Field(default=None, alias="nodeName")


class _SliceDevices(_Api):
    pool: _Pool
    devices: list[_Device] | None = Field(default=None, max_length=MAX_SLICE_DEVICES)


class _Result(_Api):
    driver: str
    pool: str
    device: str
    admin_access: bool | None = Field(default=None, alias="adminAccess")


class _Requirement(_Api):
    key: str
    operator: str
    values: list[str] | None = None


class _Term(_Api):
    match_fields: list[_Requirement] | None = Field(default=None, alias="matchFields")


class _NodeSelector(_Api):
    terms: list[_Term] | None = Field(default=None, alias="nodeSelectorTerms")


class _Results(_Api):
    results: list[_Result] | None = Field(default=None, max_length=MAX_RESULTS)


class _Allocation(_Api):
    devices: _Results | None = None
    node_selector: _NodeSelector | None = Field(default=None, alias="nodeSelector")


class _Consumer(_Api):
    api_group: str | None = Field(default=None, alias="apiGroup")
    resource: str
    name: str = Field(min_length=1)
    uid: str | None = None


class _ClaimStatus(_Api):
    allocation: _Allocation | None = None
    reserved_for: list[_Consumer] | None = Field(default=None, alias="reservedFor", max_length=MAX_CONSUMERS)


def _validate(model: type[_Api], data: object, what: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        where, message = first_problem(err, "")
        if err.errors()[0]["type"] in ("model_type", "model_attributes_type", "dict_type"):
            message = "expected an object"  # not pydantic's words, which name migopt's private classes
        raise Unreadable(f"{what}.{where}: {message}" if where else f"{what}: {message}") from None


# ---- what migopt reads of them ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DraDevice:
    """One device of the driver as its ResourceSlice advertises it."""

    name: str
    type: str | None = None  # `gpu` (a whole GPU) or `mig`
    profile: str | None = None  # MIG devices: `1g.10gb`
    uuid: str | None = None  # a whole GPU's (or an existing MIG device's) UUID
    parent_uuid: str | None = None  # MIG devices: their GPU's UUID

    @property
    def placement_start(self) -> int | None:
        """The memory slice a dynamic MIG device starts at: the last number of its name, read only when the name
        is the dynamic form for the device's own profile (its profile attribute, dots left out), so that a name of
        another form is never misread."""
        found = _DYNAMIC_MIG_NAME.match(self.name)
        if found is None or self.profile is None or found.group(1) != re.sub(r"[^a-z0-9]", "", self.profile):
            return None
        return int(found.group(2))


@dataclass(frozen=True)
class DraSlice:
    """A ResourceSlice of the driver: its node, and its pool's devices (None when they cannot be read)."""

    name: str
    node: str
    pool: str | None = None
    devices: dict[str, DraDevice] | None = None
    problem: str | None = None  # why the devices could not be read


@dataclass(frozen=True)
class DraClaim:
    """An allocated ResourceClaim holding devices of the driver."""

    key: str  # namespace/name
    devices: tuple[tuple[str, str], ...]  # (pool, device) per allocation result of the driver
    holders: tuple[RunningPod, ...]  # the pods it is reserved for, else a stand-in for the claim itself
    node: str | None = None  # the node its allocation's node selector names, if exactly one


def _attribute(device: _Device, name: str) -> str | None:
    """A string attribute, by its bare name or qualified with the driver's domain (both mean the same)."""
    attributes = device.attributes or {}
    found = attributes.get(name) or attributes.get(f"{DRIVER}/{name}")
    return found.string if found is not None else None


def slice_of_driver(obj: Mapping[str, Any]) -> bool:
    """What the slice informer keeps: the driver's slices, and any whose driver cannot be read (to report)."""
    spec = obj.get("spec")
    driver = spec.get("driver") if isinstance(spec, dict) else None
    return not isinstance(driver, str) or driver == DRIVER


def claim_of_driver(obj: Mapping[str, Any]) -> bool:
    """What the claim informer keeps: allocated claims naming a device of the driver, and any whose allocation
    cannot be read (to report). Claims of other drivers, and claims not allocated, hold nothing of migopt's."""
    status = obj.get("status")
    if status is None:
        return False
    allocation = status.get("allocation") if isinstance(status, dict) else ""
    if allocation is None:
        return False
    devices = allocation.get("devices") if isinstance(allocation, dict) else ""
    results = devices.get("results") if isinstance(devices, dict) else ""
    if results is None:
        return False
    if not isinstance(results, list):
        return True
    return any(not isinstance(r, dict) or r.get("driver") in (DRIVER, None) for r in results)


def parse_slice(obj: Mapping[str, Any]) -> DraSlice | None:
    """The slice, None when it is another driver's; `Unreadable` when its driver or node cannot be read. Devices
    that cannot be read leave `devices` None with the `problem` said: the node is still the driver's."""
    meta = _validate(_Meta, obj.get("metadata"), "metadata")
    head = _validate(_SliceNode, obj.get("spec"), "spec")
    if head.driver != DRIVER:
        return None
    if not head.node_name:
        raise Unreadable("spec.nodeName: a slice of the GPU driver names no node")
    try:
        body = _validate(_SliceDevices, obj.get("spec"), "spec")
    except Unreadable as err:
        return DraSlice(name=meta.name, node=head.node_name, problem=f"devices unreadable: {err}")
    devices = {}
    for device in body.devices or []:
        devices[device.name] = DraDevice(
            name=device.name,
            type=_attribute(device, "type"),
            profile=_attribute(device, "profile"),
            uuid=_attribute(device, "uuid"),
            parent_uuid=_attribute(device, "parentUUID"),
        )
    return DraSlice(name=meta.name, node=head.node_name, pool=body.pool.name, devices=devices)


def _selected_node(allocation: _Allocation) -> str | None:
    """The one node a node-local allocation is restricted to (`matchFields` on `metadata.name`), else None."""
    terms = (allocation.node_selector.terms or []) if allocation.node_selector is not None else []
    names = {
        value
        for term in terms
        for requirement in term.match_fields or []
        if requirement.key == "metadata.name" and requirement.operator == "In"
        for value in requirement.values or []
    }
    return next(iter(names)) if len(names) == 1 else None


def claim_stand_in(claim: str) -> str:
    """The holder of an allocated claim no pod is reserved for yet (or any more): its devices are still taken."""
    return f"dra-claim:{claim}"


def parse_claim(obj: Mapping[str, Any]) -> DraClaim | None:
    """The claim, None when no device of the driver is allocated to it; `Unreadable` when its allocation or
    consumers cannot be read. Results with admin access are left out: such access does not take the device from
    anyone (monitoring tools use it), so it holds nothing."""
    meta = _validate(_Meta, obj.get("metadata"), "metadata")
    status = _validate(_ClaimStatus, obj.get("status") or {}, "status")
    allocation = status.allocation
    results = (allocation.devices.results or []) if allocation is not None and allocation.devices else []
    devices = tuple((r.pool, r.device) for r in results if r.driver == DRIVER and not r.admin_access)
    if allocation is None or not devices:
        return None
    namespace = meta.namespace or "default"
    key = f"{namespace}/{meta.name}"
    holders = tuple(
        RunningPod(name=f"{namespace}/{c.name}", uid=c.uid or None, protection=Protection.DRA_CLAIM)
        for c in status.reserved_for or []
        if c.resource == "pods" and not c.api_group
    ) or (RunningPod(name=claim_stand_in(key), priority=UNATTRIBUTED_PRIORITY, protection=Protection.DRA_CLAIM),)
    return DraClaim(key=key, devices=devices, holders=holders, node=_selected_node(allocation))


# ---- the cluster's DRA facts, per node ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DraHold:
    """A device of the driver a claim holds on a node, and who holds it."""

    holder: str  # the first pod the claim is reserved for, or a stand-in for the claim itself
    claim: str
    device: DraDevice | None  # None: no slice of its pool lists it (so neither its GPU nor its instance is known)


@dataclass(frozen=True)
class NodeDra:
    """Why the node is the driver's, and the devices claims hold on it."""

    managed_by: str
    holds: tuple[DraHold, ...] = ()


@dataclass(frozen=True)
class DraView:
    nodes: dict[str, NodeDra] = field(default_factory=dict)
    holders: dict[str, RunningPod] = field(default_factory=dict)  # pods (and stand-ins) holding the driver's devices
    skipped: dict[str, str] = field(default_factory=dict)  # `resourceslices/<name>`, `resourceclaims/<ns>/<name>`


def _listed(pool: Iterable[DraSlice], name: str) -> tuple[str, DraDevice] | None:
    """(node, device) of the slice of the pool that lists the device, if one does."""
    for found in pool:
        device = (found.devices or {}).get(name)
        if device is not None:
            return found.node, device
    return None


def dra_view(slices: Iterable[DraSlice], claims: Iterable[DraClaim]) -> DraView:
    """The nodes the driver manages (each with the first slice or claim that shows it, by name), the devices claims
    hold on each, and the pods holding them. A device no slice lists is placed on the node its claim's allocation
    names; a claim with a device neither tells is reported in `skipped` (its other devices still count)."""
    managed: dict[str, str] = {}
    by_pool: dict[str, list[DraSlice]] = defaultdict(list)
    for found in sorted(slices, key=lambda s: s.name):
        managed.setdefault(found.node, f"GPUs managed by the DRA driver {DRIVER} (ResourceSlice {found.name})")
        if found.pool is not None:
            by_pool[found.pool].append(found)
    holds: dict[str, list[DraHold]] = defaultdict(list)
    holders: dict[str, RunningPod] = {}
    skipped: dict[str, str] = {}
    for claim in sorted(claims, key=lambda c: c.key):
        holders |= {p.name: p for p in claim.holders}
        for pool, name in claim.devices:
            listed = _listed(by_pool.get(pool, ()), name)
            node = listed[0] if listed is not None else claim.node
            if node is None:
                skipped[f"{CLAIMS}/{claim.key}"] = (
                    f"device {name} of pool {pool} is in no ResourceSlice and the allocation names no one node"
                )
                continue
            managed.setdefault(node, f"GPUs managed by the DRA driver {DRIVER} (ResourceClaim {claim.key})")
            device = listed[1] if listed else None
            holds[node].append(DraHold(holder=claim.holders[0].name, claim=claim.key, device=device))
    nodes = {node: NodeDra(managed_by=why, holds=tuple(holds.get(node, ()))) for node, why in managed.items()}
    return DraView(nodes=nodes, holders=holders, skipped=skipped)


# ---- the devices held, on the node's GPU layouts ------------------------------------------------------------------


def _target(
    device: DraDevice | None, gpus: Mapping[int, GpuState], report: NodeGpuReport | None
) -> tuple[int | None, int | None, str]:
    """(GPU index, instance start, why not exact): one instance, a whole GPU (start None), or every GPU of the
    node (both None). A GPU claimed whole is exact (its `why` is empty)."""
    if device is None:
        return None, None, "no ResourceSlice lists it"
    gpu_of = {g.uuid: g.index for g in report.gpus} if report is not None else {}
    if device.type == "gpu":
        if device.uuid in gpu_of:
            return gpu_of[device.uuid], None, ""
        return None, None, "its GPU's UUID is not in the node agent's report"
    if device.type != "mig":
        return None, None, f"its type {device.type!r} is neither gpu nor mig"
    instance_of = {i.uuid: (g.index, i.start) for g in report.gpus for i in g.instances if i.uuid} if report else {}
    start: int | None
    if device.uuid in instance_of:  # a MIG device that exists, by its own UUID
        index, start = instance_of[device.uuid]
    elif device.parent_uuid in gpu_of:  # a dynamic one: its GPU by UUID, its placement from its name
        index, start = gpu_of[device.parent_uuid], device.placement_start
        if start is None:
            return index, None, "its placement cannot be read from its name"
    else:
        return None, None, "its GPU (parentUUID) is not in the node agent's report"
    gpu = gpus.get(index)
    instance = next((i for i in gpu.instances if i.start == start), None) if gpu is not None else None
    if gpu is None or instance is None or not _same_profile(gpu, instance.profile, device.profile):
        return index, None, f"GPU {index} has no {device.profile or 'such'} instance at memory slice {start}"
    return index, start, ""


def _same_profile(gpu: GpuState, profile: str, claimed: str | None) -> bool:
    """Whether the instance's profile is the device's (None: the slice does not say, so it cannot be known)."""
    if claimed is None:
        return False
    try:
        return gpu.gpu_model.profile(claimed).name == gpu.gpu_model.profile(profile).name
    except MigoptError:  # a profile its model does not have: not this instance
        return False


def place_holds(
    gpus: Sequence[GpuState], holds: Sequence[DraHold], report: NodeGpuReport | None
) -> tuple[list[GpuState], list[str]]:
    """The GPUs with every instance a hold names given its holder (instances another pod holds are left as they
    are), and one line per hold placed only conservatively, saying why."""
    by_index = {g.index: g for g in gpus}
    layouts = {g.index: list(g.instances) for g in gpus}
    notes: list[str] = []
    for hold in sorted(holds, key=lambda h: (h.claim, h.device.name if h.device else "")):
        index, start, why = _target(hold.device, by_index, report)
        what = f"claim {hold.claim} device {hold.device.name if hold.device else '?'}"
        if why:
            scope = f"GPU {index}" if index is not None else "every GPU of the node"
            notes.append(f"{what}: {why}; {scope} taken as busy")
        indices = [index] if index is not None else sorted(layouts)
        for gpu_index in indices:
            instances = layouts.get(gpu_index, [])
            for n, instance in enumerate(instances):
                if instance.pod is None and (start is None or instance.start == start):
                    instances[n] = InstanceState(profile=instance.profile, start=instance.start, pod=hold.holder)
    placed = [g.model_copy(update={"instances": layouts[g.index]}) for g in gpus]
    return placed, notes


# ---- reading the informers' objects, each parsed once while it stays the same object ---------------------------

T = TypeVar("T")


class _Parsed(Generic[T]):
    """Parse results by informer key, reused while the informer holds the same object (it replaces, never edits)."""

    def __init__(self) -> None:
        self._by_key: dict[str, tuple[Mapping[str, Any], T | None, str | None]] = {}
        self.changed = True  # whether the last `read` saw an object added, replaced or removed

    def read(
        self, entries: Iterable[tuple[str, Mapping[str, Any]]], parse: Callable[[Mapping[str, Any]], T | None]
    ) -> list[tuple[str, T | None, str | None]]:
        fresh: dict[str, tuple[Mapping[str, Any], T | None, str | None]] = {}
        reused = 0
        for key, obj in entries:
            cached = self._by_key.get(key)
            if cached is not None and cached[0] is obj:
                fresh[key] = cached
                reused += 1
                continue
            try:
                fresh[key] = (obj, parse(obj), None)
            except Unreadable as err:
                fresh[key] = (obj, None, str(err))
        self.changed = reused != len(fresh) or reused != len(self._by_key)
        self._by_key = fresh
        return [(key, parsed, problem) for key, (_, parsed, problem) in fresh.items()]


def _usable(read: list[tuple[str, T | None, str | None]], resource: str, skipped: dict[str, str]) -> list[T]:
    """What was parsed; the keys that could not be, with why, added to `skipped` as `<resource>/<key>`."""
    skipped |= {f"{resource}/{key}": problem for key, _, problem in read if problem is not None}
    return [parsed for _, parsed, _ in read if parsed is not None]


class DraReader:
    """The DRA view of the informers' current slices and claims; the last one again while none of them changed."""

    def __init__(self) -> None:
        self._slices: _Parsed[DraSlice] = _Parsed()
        self._claims: _Parsed[DraClaim] = _Parsed()
        self._view: DraView | None = None

    def read(
        self, slices: Iterable[tuple[str, Mapping[str, Any]]], claims: Iterable[tuple[str, Mapping[str, Any]]]
    ) -> DraView:
        read_slices = self._slices.read(slices, parse_slice)
        read_claims = self._claims.read(claims, parse_claim)
        if self._view is not None and not self._slices.changed and not self._claims.changed:
            return self._view
        skipped: dict[str, str] = {}
        found_slices = _usable(read_slices, SLICES, skipped)
        skipped |= {f"{SLICES}/{key}": s.problem for key, s, _ in read_slices if s is not None and s.problem}
        view = dra_view(found_slices, _usable(read_claims, CLAIMS, skipped))
        self._view = DraView(nodes=view.nodes, holders=view.holders, skipped=skipped | view.skipped)
        return self._view
