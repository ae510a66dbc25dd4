"""Which MIG instances each GPU of a node has, and which pod holds which: from the best source at hand.

1. `agent`: the node agent's annotation (`nvidia_protocol.agent_report`): exact placements, busy flags, and the pod
   on each device when the kubelet pod-resources socket is mounted.
2. `prometheus`: dcgm-exporter's `pod` labels give (GPU, profile) per pod; placements come from the node's
   `nvidia.com/mig.config` entry, laid out as mig-parted would.
3. `conservative`: only the config entry and the pods bound to the node. A GPU counts as busy if any pod on
   the node holds a device of a profile it has: such GPUs are never reconfigured (a non-evictable stand-in
   holds them), because a GPU that may be busy must not be touched.

Whatever the source, a pod whose device is only guessed is never planned for eviction: the plan may only evict
pods whose GPU is known. A node whose GPUs cannot be known at all (unknown model, no config entry, a change in
flight without the agent) is left out of planning with a reason.

The agent's report is verified before it is trusted (`verify_report`), because anyone who may annotate the node
can write it and an agent that stopped leaves its last one behind: it must parse, be feasible for its models
per the catalog, be fresh by the reader's clock, and, while the node is in a steady state, match what the
device plugin advertises. A report failing a check is rejected with a `RejectReason` and the node falls back
to the next source exactly as if it had no report.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from nvidia_protocol.agent_report import GPU_REPORT_ANNOTATION, NodeGpuReport, parse_report
from nvidia_protocol.labels import (
    COUNT_LABEL,
    DEPLOY_PREFIX,
    DEVICE_PLUGIN_DEPLOY_LABEL,
    MIG_CONFIG_LABEL,
    MIG_STATE_LABEL,
    PAUSED,
)
from nvidia_protocol.migparted import MigPartedConfig, entry_applies
from nvidia_protocol.standard_configs import standard_map
from solver.catalog import GpuModel, load_catalog
from solver.errors import MigoptError
from solver.geometry import Instance, check_layout, find_layout
from solver.profiles import MIG_RESOURCE_PREFIX, profile_from_resource, resource_name
from solver.snapshot import (
    GPU_RESOURCE,
    MAX_GPUS_PER_NODE,
    PRODUCT_LABEL,
    STRATEGY_LABEL,
    GpuState,
    InstanceState,
)

WHOLE_GPU_IN_USE = "a GPU has MIG disabled and a pod may use it whole"
UNATTRIBUTED_PRIORITY = 2_000_000_000  # above every user priority: the planner never displaces such a stand-in


class LayoutSource(StrEnum):
    AGENT = "agent"
    PROMETHEUS = "prometheus"
    CONSERVATIVE = "conservative"


class HeldDevices(BaseModel):
    """A pod bound to the node and the GPU devices it requests."""

    model_config = ConfigDict(frozen=True)

    pod: str
    requests: dict[str, int]


class DeviceHolder(BaseModel):
    """One MIG device a pod holds, as dcgm-exporter's labels show it."""

    model_config = ConfigDict(frozen=True)

    node: str
    gpu: int
    profile: str
    pod: str


class NodeLayout(BaseModel):
    """The node's GPUs for the planner, where that came from, and which pods' devices were only guessed."""

    source: LayoutSource
    gpus: list[GpuState]
    guessed: list[str] = []  # real pods placed on a GPU by guess: the planner must not evict them
    unattributed: list[str] = []  # names standing for devices in use by pods unknown


def unattributed_holder(node: str, gpu: int, n: int) -> str:
    return f"unattributed:{node}:gpu{gpu}:{n}"


def node_model(labels: Mapping[str, str]) -> GpuModel:
    """The node's GPU model from GFD's product label (`<model>-MIG-<profile>` under the single strategy)."""
    product = labels.get(PRODUCT_LABEL, "")
    if not product:
        raise MigoptError(f"no {PRODUCT_LABEL} label")
    return load_catalog().model(product.rpartition("-MIG-")[0] or product)


def held_profiles(labels: Mapping[str, str], held: Sequence[HeldDevices]) -> Counter[str]:
    """Devices held on the node, by profile (single strategy: `nvidia.com/gpu` means the node's one profile)."""
    counts: Counter[str] = Counter()
    single = labels.get(STRATEGY_LABEL) == "single"
    single_profile = labels.get(PRODUCT_LABEL, "").rpartition("-MIG-")[2] if single else ""
    for pod in held:
        for resource, count in pod.requests.items():
            if resource.startswith(MIG_RESOURCE_PREFIX):
                counts[profile_from_resource(resource)] += count
            elif resource == GPU_RESOURCE and single_profile:
                counts[single_profile] += count
    return counts


# ---- verifying the agent's report ---------------------------------------------------------------------------

MAX_REPORTED_GPUS = 64  # more than any node has: a report naming more is not describing a node


class RejectReason(StrEnum):
    """Why a node agent report is not trusted (the `reason` of `migopt_layout_source_rejected_total`)."""

    MALFORMED = "malformed"  # not JSON, or not the report's schema
    UNDATED = "undated"  # no `observed_at`: its age cannot be known (an agent older than this controller)
    STALE = "stale"  # observed longer ago than the maximum age: its agent stopped publishing
    FUTURE = "future"  # observed further in the future than clock skew explains
    INFEASIBLE = "infeasible"  # a layout no GPU of its model can have, or GPUs named twice or too many
    ALLOCATABLE_MISMATCH = "allocatable-mismatch"  # the device plugin advertises other devices (steady state)


class ReportRejected(MigoptError):
    """A report that failed a check; the node falls back to the next source."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(f"node agent report rejected ({reason}): {message}")
        self.reason = reason


class ReportChecks(BaseModel):
    """What a report is checked against besides itself: the reader's wall clock and the node's resources."""

    model_config = ConfigDict(frozen=True)

    now: float = Field(description="the reader's wall clock, Unix seconds")
    max_age_s: float = Field(default=600.0, gt=0)
    max_skew_s: float = Field(default=60.0, ge=0, description="how far ahead of `now` a report may be")
    allocatable: dict[str, int] = Field(default={}, description="the node's GPU resources, status.allocatable")
    capacity: dict[str, int] = Field(default={}, description="the node's GPU resources, status.capacity")
    advertised_since: float | None = Field(
        default=None, description="when the reader saw the node's resources change last (None: not seen to)"
    )


def _when(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_fresh(report: NodeGpuReport, checks: ReportChecks) -> None:
    """Observed within `max_age_s` before `now`, and not more than `max_skew_s` after it."""
    if report.observed_at is None:
        raise ReportRejected(RejectReason.UNDATED, "it has no observed_at, so its age is unknown")
    observed = report.observed_at.timestamp()
    age = checks.now - observed
    if age > checks.max_age_s:
        raise ReportRejected(
            RejectReason.STALE,
            f"observed at {_when(observed)}, {age:.0f}s ago, more than the {checks.max_age_s:.0f}s allowed",
        )
    if -age > checks.max_skew_s:
        raise ReportRejected(
            RejectReason.FUTURE,
            f"observed at {_when(observed)}, {-age:.0f}s in the future, more than the {checks.max_skew_s:.0f}s "
            "of clock skew allowed",
        )


def check_feasible(report: NodeGpuReport) -> None:
    """Every GPU once, not too many, and each one's instances a layout its model can have: profiles of the
    model, each at an allowed start with its placement's size, no overlap, within the per-profile maxima and
    compute slices; a GPU with MIG off has none. An unknown model is not a lie but a model migopt lacks: that
    is `from_report`'s plain error, not a rejection."""
    indices = [g.index for g in report.gpus]
    if len(indices) > MAX_REPORTED_GPUS:
        raise ReportRejected(RejectReason.INFEASIBLE, f"{len(indices)} GPUs, more than {MAX_REPORTED_GPUS}")
    if duplicates := sorted(i for i, n in Counter(indices).items() if n > 1):
        raise ReportRejected(RejectReason.INFEASIBLE, f"GPU index {duplicates[0]} appears more than once")
    for gpu in report.gpus:
        model = load_catalog().model(gpu.pci_device_id)
        if not gpu.mig_current and gpu.instances:
            raise ReportRejected(RejectReason.INFEASIBLE, f"GPU {gpu.index} has MIG off but lists MIG instances")
        layout = []
        for inst in gpu.instances:
            try:
                profile = model.profile(inst.profile)
            except MigoptError as err:
                raise ReportRejected(RejectReason.INFEASIBLE, f"GPU {gpu.index}: {err}") from None
            if inst.size != profile.memory_slices:
                raise ReportRejected(
                    RejectReason.INFEASIBLE,
                    f"GPU {gpu.index}: {profile.name}@{inst.start} has size {inst.size}, "
                    f"the profile's placements have {profile.memory_slices}",
                )
            layout.append(Instance(profile=profile.name, start=inst.start))
        if problems := check_layout(model, layout):
            raise ReportRejected(RejectReason.INFEASIBLE, f"GPU {gpu.index} ({model.key}): {problems[0]}")


def advertised_devices(report: NodeGpuReport, single: bool) -> dict[str, int]:
    """What the device plugin advertises for the report's GPUs: under `mixed`, whole GPUs (MIG off) as
    `nvidia.com/gpu` and each profile as `nvidia.com/mig-<profile>`; under `single`, all MIG devices of the
    node's one type, or its whole GPUs, as `nvidia.com/gpu`, and 0 for any other mix (the plugin's rule)."""
    whole = sum(1 for g in report.gpus if not g.mig_current)
    devices = [
        (g.pci_device_id, load_catalog().model(g.pci_device_id).profile(i.profile).name)
        for g in report.gpus
        if g.mig_current
        for i in g.instances
    ]
    if not single:
        return {GPU_RESOURCE: whole, **Counter(resource_name(profile) for _, profile in devices)}
    if whole == len(report.gpus):
        return {GPU_RESOURCE: whole}
    if whole == 0 and all(g.instances for g in report.gpus) and len({(m, p) for m, p in devices}) == 1:
        return {GPU_RESOURCE: len(devices)}
    return {GPU_RESOURCE: 0}


def steady_state(labels: Mapping[str, str], checks: ReportChecks) -> bool:
    """mig-manager is done (`success`, no operand paused for a change) and the device plugin has registered
    its devices: it is not turned off, and the node does not show every device resource at 0 while some
    capacity remains (kubelet's view while the plugin restarts after a change)."""
    if labels.get(MIG_STATE_LABEL) != "success":
        return False
    if any(k.startswith(DEPLOY_PREFIX) and v == PAUSED for k, v in labels.items()):
        return False
    if labels.get(DEVICE_PLUGIN_DEPLOY_LABEL) == "false" or not checks.allocatable:
        return False
    return any(checks.allocatable.values()) or not any(checks.capacity.values())


def check_allocatable(report: NodeGpuReport, labels: Mapping[str, str], checks: ReportChecks) -> None:
    """In a steady state, the report's devices are what the device plugin advertises, resource by resource.
    A report observed before the node's resources last changed may simply predate the change (the agent reads
    every interval): it is not trusted, but not rejected as a lie either."""
    if not steady_state(labels, checks):
        return
    expected = advertised_devices(report, labels.get(STRATEGY_LABEL) == "single")
    differences = [
        f"{expected.get(k, 0)}x {k} in the report, {checks.allocatable.get(k, 0)} allocatable"
        for k in sorted(expected.keys() | checks.allocatable.keys())
        if expected.get(k, 0) != checks.allocatable.get(k, 0)
    ]
    if not differences:
        return
    observed = report.observed_at.timestamp() if report.observed_at is not None else None
    if checks.advertised_since is not None and observed is not None and observed < checks.advertised_since:
        raise MigoptError(f"node agent report predates the node's current devices: {differences[0]}")
    raise ReportRejected(RejectReason.ALLOCATABLE_MISMATCH, "; ".join(differences[:3]))


def verify_report(report: NodeGpuReport, labels: Mapping[str, str], checks: ReportChecks | None) -> None:
    """Every check, cheapest first; `ReportRejected` on the first that fails. Without `checks` (no clock, no
    node resources) only feasibility. A report with `error` set describes no GPUs: `from_report` refuses it."""
    if report.error is not None:
        return
    if checks is not None:
        check_fresh(report, checks)
    check_feasible(report)
    if checks is not None:
        check_allocatable(report, labels, checks)


def report_from_annotation(text: str, node: str) -> NodeGpuReport:
    """The annotation parsed; `ReportRejected` (malformed) when it does not parse."""
    try:
        return parse_report(text, node)
    except MigoptError as err:
        raise ReportRejected(RejectReason.MALFORMED, str(err)) from None


def from_report(
    report: NodeGpuReport,
    node: str,
    labels: Mapping[str, str],
    held: Sequence[HeldDevices],
    holders: Sequence[DeviceHolder] | None,
) -> NodeLayout:
    """Exact placements. A busy device the report names no pod for is held by a stand-in (GPU locked). A pod
    bound to the node that the report does not place (no pod-resources socket, or a pod idle at the moment
    NVML looked) is placed from dcgm's labels when they know every such pod, else locked conservatively: an
    idle pod still holds its device, and its GPU must not be rebuilt under it."""
    if report.error is not None:
        raise MigoptError(f"node agent reports an error: {report.error}")
    if any(not g.mig_current for g in report.gpus) and any(GPU_RESOURCE in h.requests for h in held):
        raise MigoptError(WHOLE_GPU_IN_USE)
    known = {h.pod for h in held}
    layouts: dict[int, list[InstanceState]] = {}
    models: dict[int, str] = {}
    unattributed = []
    for gpu in sorted(report.gpus, key=lambda g: g.index):
        if gpu.mig_current != gpu.mig_pending:
            raise MigoptError(f"GPU {gpu.index} has a MIG mode change pending")
        model = load_catalog().model(gpu.pci_device_id)
        instances = []
        for n, inst in enumerate(sorted(gpu.instances, key=lambda i: i.start)):
            pod = inst.pod if inst.pod in known else None
            if pod is None and inst.busy:
                pod = unattributed_holder(node, gpu.index, n)
                unattributed.append(pod)
            instances.append(InstanceState(profile=model.profile(inst.profile).name, start=inst.start, pod=pod))
        layouts[gpu.index], models[gpu.index] = instances, model.key
    placed = {i.pod for instances in layouts.values() for i in instances}
    missing = [h for h in held if h.requests and h.pod not in placed]
    source, guessed = LayoutSource.AGENT, list[str]()
    if missing:
        source, guessed, stand_ins = _attach_unplaced(node, layouts, labels, missing, holders)
        unattributed += stand_ins
    gpus = [GpuState(index=i, model=models[i], instances=layouts[i]) for i in sorted(layouts)]
    return NodeLayout(source=source, gpus=gpus, guessed=guessed, unattributed=unattributed)


def _attach_unplaced(
    node: str,
    layouts: dict[int, list[InstanceState]],
    labels: Mapping[str, str],
    pods: Sequence[HeldDevices],
    holders: Sequence[DeviceHolder] | None,
) -> tuple[LayoutSource, list[str], list[str]]:
    """Place pods bound to the node that no GPU names yet: exactly from dcgm when it knows all of them, else
    conservatively. Returns the source that placed them, the pods only guessed, and the stand-ins added."""
    wanted = {h.pod for h in pods}
    mapped = [h for h in holders or [] if h.pod in wanted]
    if holders is not None and {h.pod for h in mapped} == wanted:
        _attach_exact(layouts, mapped)
        return LayoutSource.PROMETHEUS, [], []
    guessed, stand_ins = _attach_conservatively(node, layouts, labels, pods)
    return LayoutSource.CONSERVATIVE, guessed, stand_ins


def configured_maps(
    labels: Mapping[str, str], config: MigPartedConfig | None, model: GpuModel
) -> dict[int, dict[str, int] | None]:
    """Per GPU index, the `mig-devices` map the node's applied config gives it (None: MIG disabled)."""
    name = labels.get(MIG_CONFIG_LABEL, "")
    state = labels.get(MIG_STATE_LABEL, "")
    if not name or state != "success":
        raise MigoptError(f"MIG config {name or '(none)'!r} is not applied (state {state or '(none)'!r})")
    try:
        count = int(labels.get(COUNT_LABEL, ""))
    except ValueError:
        raise MigoptError(f"no usable {COUNT_LABEL} label") from None
    if not 0 <= count <= MAX_GPUS_PER_NODE:  # a label anyone with node-patch rights may write: never loop on it
        raise MigoptError(f"{COUNT_LABEL}={count} is not a GPU count (0 to {MAX_GPUS_PER_NODE})")
    if labels.get(STRATEGY_LABEL) == "single":
        raise MigoptError("under the single strategy the GPU count needs the node agent")
    maps: dict[int, dict[str, int] | None] = {}
    if config is not None and name in config.mig_configs:
        for entry in config.mig_configs[name]:  # later entries override earlier ones, as mig-parted applies them
            for index in range(count):
                if entry_applies(entry, index, model):
                    maps[index] = dict(entry.mig_devices or {}) if entry.mig_enabled else None
    else:
        for index in range(count):
            maps[index] = standard_map(model, name)
    if len(maps) != count:
        raise MigoptError(f"config {name!r} does not cover all {count} GPUs")
    return maps


def from_config(
    node: str,
    labels: Mapping[str, str],
    config: MigPartedConfig | None,
    held: Sequence[HeldDevices],
    holders: Sequence[DeviceHolder] | None,
) -> NodeLayout:
    """Placements as mig-parted lays out the configured maps; holders from dcgm (`holders`) or, without them,
    guessed and locked (see the module docstring)."""
    model = node_model(labels)
    maps = configured_maps(labels, config, model)
    if any(devices is None for devices in maps.values()) and any(GPU_RESOURCE in h.requests for h in held):
        raise MigoptError(WHOLE_GPU_IN_USE)
    layouts: dict[int, list[InstanceState]] = {}
    for index, devices in sorted(maps.items()):
        layout = find_layout(model, devices or {}) if devices else []
        if layout is None:
            raise MigoptError(f"config gives GPU {index} an infeasible map {devices}")
        layouts[index] = [InstanceState(profile=i.profile, start=i.start) for i in layout]
    source, guessed, unattributed = _attach_unplaced(node, layouts, labels, [h for h in held if h.requests], holders)
    gpus = [GpuState(index=i, model=model.key, instances=layouts[i]) for i in sorted(layouts)]
    return NodeLayout(source=source, gpus=gpus, guessed=guessed, unattributed=unattributed)


def _attach_exact(layouts: dict[int, list[InstanceState]], mapped: Sequence[DeviceHolder]) -> None:
    for holder in sorted(mapped, key=lambda h: (h.gpu, h.profile, h.pod)):
        instances = layouts.get(holder.gpu, [])
        free = next((n for n, i in enumerate(instances) if i.profile == holder.profile and i.pod is None), None)
        if free is None:
            raise MigoptError(
                f"dcgm shows {holder.pod} on GPU {holder.gpu} ({holder.profile}), which has no such device"
            )
        instances[free] = replace(instances[free], pod=holder.pod)


def _attach_conservatively(
    node: str, layouts: dict[int, list[InstanceState]], labels: Mapping[str, str], held: Sequence[HeldDevices]
) -> tuple[list[str], list[str]]:
    """On every GPU with a free instance of a profile these pods hold, mark as many of those instances held as
    they hold of it (real pods first, then stand-ins): every GPU that may be where they are is locked, and free
    capacity is only over-estimated where the same profile sits on several GPUs."""
    counts = held_profiles(labels, held)
    pods_by_profile: dict[str, list[str]] = defaultdict(list)
    for h in sorted(held, key=lambda h: h.pod):
        for profile, n in held_profiles(labels, [h]).items():
            pods_by_profile[profile] += [h.pod] * n
    guessed: set[str] = set()
    unattributed: list[str] = []
    for index, instances in sorted(layouts.items()):
        for profile, n_held in counts.items():
            slots = [k for k, i in enumerate(instances) if i.profile == profile and i.pod is None][:n_held]
            for k in slots:
                if pods_by_profile[profile]:
                    pod = pods_by_profile[profile].pop(0)
                    guessed.add(pod)
                else:
                    pod = unattributed_holder(node, index, k)
                    unattributed.append(pod)
                instances[k] = replace(instances[k], pod=pod)
    return sorted(guessed), unattributed


def resolve_layout(
    node: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    config: MigPartedConfig | None,
    held: Sequence[HeldDevices],
    holders: Sequence[DeviceHolder] | None,
    *,
    checks: ReportChecks | None = None,
    on_reject: Callable[[ReportRejected], None] | None = None,
) -> NodeLayout:
    """The best source that works; `MigoptError` naming why when none does (the node is then not planned).
    The agent's report is verified first (`verify_report`); one rejected is passed to `on_reject`, and the node
    falls back to the next source as if it had none."""
    text = annotations.get(GPU_REPORT_ANNOTATION)
    if not text:
        return from_config(node, labels, config, held, holders)
    try:
        report = report_from_annotation(text, node)
        verify_report(report, labels, checks)
        return from_report(report, node, labels, held, holders)
    except MigoptError as agent_error:
        if isinstance(agent_error, ReportRejected) and on_reject is not None:
            on_reject(agent_error)
        try:
            return from_config(node, labels, config, held, holders)
        except MigoptError as config_error:
            raise MigoptError(f"{agent_error}; and without the agent: {config_error}") from None
