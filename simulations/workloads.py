"""The pods a simulation feeds to the cluster: replayed from the Alibaba GPU trace or generated synthetically.

The Alibaba `cluster-trace-gpu-v2023` pod lists (spec papers-and-traces §2.1) describe a GPU-sharing cluster
without MIG: each pod asks for `num_gpu` GPUs, and a GPU-sharing pod for a `gpu_milli` share of one. To drive
a MIG simulation the shares are mapped onto MIG profiles (`GpuMilliMapping`, a modelling choice, §2.1.5), and
the rows are replayed in one of the two modes of §2.1.6: `inflate` (FGD's arrival-only protocol) or `timed`
(creation/deletion times, scaled). `generate` makes Poisson workloads from a profile mix instead.

The trace files are research-use data: they are read from wherever the caller keeps them, never bundled.
"""

from __future__ import annotations

import csv
import logging
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from simulations.twin.state import SizedRequest
from solver.catalog import GpuModel, Profile, load_catalog
from solver.errors import MigoptError
from solver.profiles import MIG_RESOURCE_PREFIX, profile_from_resource, resource_name

log = logging.getLogger(__name__)

CORE_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
"""The 5-column variant (`openb_pod_list_multigpu*`): resources only, no QoS, no timestamps."""
TIMED_COLUMNS = (*CORE_COLUMNS, "gpu_spec", "qos", "pod_phase", "creation_time", "deletion_time", "scheduled_time")
"""The 11-column variant (`default`, `gpushare*`, `gpuspec*`, `cpu*`)."""

QOS_PRIORITY: dict[str, int] = {"LS": 1000, "Burstable": 500, "Guaranteed": 500, "BE": 0}
"""Latency-sensitive pods outrank the rest; best-effort ones are the first a reconfiguration may disturb."""

TIMED_NEEDS_TIMES = "timed replay needs creation_time/deletion_time (the 5-column variant has none; use inflate)"


class WorkloadPod(BaseModel):
    """One pod as the simulator sees it: when it arrives, how long it runs, what it asks for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    arrival_s: float = Field(ge=0.0)
    duration_s: float | None = Field(default=None, ge=0.0, description="None: runs until the simulation ends")
    requests: dict[str, int] = Field(min_length=1, description="extended resources, e.g. nvidia.com/mig-1g.10gb")
    priority: int = 0
    node_selector: dict[str, str] = {}
    source: str = Field(min_length=1, description='"trace:<trace pod name>" or "synthetic"')

    @field_validator("requests")
    @classmethod
    def _positive_counts(cls, requests: dict[str, int]) -> dict[str, int]:
        if any(count < 1 for count in requests.values()):
            raise ValueError("request counts must be at least 1")
        return requests


class TraceRow(BaseModel):
    """One pod of an Alibaba trace file, as written there (times are None in the 5-column variant)."""

    model_config = ConfigDict(frozen=True)

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    gpu_spec: str = ""
    qos: str | None = None
    pod_phase: str | None = None
    creation_time: float | None = None
    deletion_time: float | None = None
    scheduled_time: float | None = None
    line: int = Field(default=0, description="line in the source file, for messages")

    @property
    def has_times(self) -> bool:
        return self.creation_time is not None

    @property
    def priority(self) -> int:
        """Pod priority from the QoS class; rows without one (5-column variant) get 0."""
        return QOS_PRIORITY[self.qos] if self.qos else 0


# --- loading -------------------------------------------------------------------------------------------------


def load_trace(path: str | Path) -> list[TraceRow]:
    """Read an Alibaba pod list, 11- or 5-column variant (told apart by the header).

    Any fault raises a one-line `MigoptError` naming the file, the line and the column, so a truncated or
    hand-edited trace is caught before a long simulation starts.
    """
    where = str(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return _parse(where, csv.reader(handle))
    except OSError as err:
        raise MigoptError(f"{where}: cannot read trace: {err.strerror or err}") from err
    except csv.Error as err:
        raise MigoptError(f"{where}: malformed CSV: {err}") from err
    except UnicodeDecodeError as err:  # read in chunks: the offset is the chunk's, so only the byte is named
        raise MigoptError(f"{where}: cannot read trace: not UTF-8 text (byte 0x{err.object[err.start]:02x})") from None


def _parse(where: str, reader: Iterable[list[str]]) -> list[TraceRow]:
    lines = iter(reader)
    header = [cell.strip() for cell in next(lines, [])]
    if not any(header):
        raise MigoptError(f"{where}: line 1: empty file, expected a header with {', '.join(CORE_COLUMNS)}")
    columns = _columns(where, header)
    positions = {name: header.index(name) for name in columns}
    rows: list[TraceRow] = []
    for number, cells in enumerate(lines, start=2):
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        rows.append(_row(where, number, header, positions, cells))
    if not rows:
        raise MigoptError(f"{where}: no data rows after the header")
    return rows


def _columns(where: str, header: list[str]) -> tuple[str, ...]:
    """The variant the header announces: the 11 columns if any timed-only column is present, else the 5."""
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        raise MigoptError(f"{where}: line 1, column {duplicates[0]!r}: appears more than once in the header")
    wanted = TIMED_COLUMNS if set(header) & set(TIMED_COLUMNS[len(CORE_COLUMNS) :]) else CORE_COLUMNS
    missing = [c for c in wanted if c not in header]
    if missing:
        variant = "11-column" if wanted is TIMED_COLUMNS else "5-column"
        raise MigoptError(f"{where}: line 1, column {missing[0]!r}: missing from the header ({variant} variant)")
    return wanted


def _row(where: str, number: int, header: list[str], positions: dict[str, int], cells: list[str]) -> TraceRow:
    if len(cells) != len(header):
        column = header[len(cells)] if len(cells) < len(header) else "(extra)"
        raise MigoptError(f"{where}: line {number}, column {column!r}: expected {len(header)} fields, got {len(cells)}")
    raw = {name: cells[at].strip() for name, at in positions.items()}

    def fail(column: str, problem: str) -> MigoptError:
        return MigoptError(f"{where}: line {number}, column {column!r}: {problem}")

    def integer(column: str) -> int:
        text = raw[column]
        try:
            value = int(text)
        except ValueError:
            raise fail(column, f"expected a whole number, got {text!r}") from None
        if value < 0:
            raise fail(column, f"must not be negative, got {value}")
        return value

    def seconds(column: str, required: bool) -> float | None:
        text = raw[column]
        if not text:
            if required:
                raise fail(column, "empty (a timestamp in seconds is required)")
            return None
        try:
            value = float(text)
        except ValueError:
            raise fail(column, f"expected a timestamp in seconds, got {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise fail(column, f"expected a non-negative timestamp, got {text!r}")
        return value

    if not raw["name"]:
        raise fail("name", "empty pod name")
    values: dict[str, Any] = {"name": raw["name"], "line": number}
    for column in CORE_COLUMNS[1:]:
        values[column] = integer(column)
    if values["gpu_milli"] > 1000:
        raise fail("gpu_milli", f"must be at most 1000 (one whole GPU), got {values['gpu_milli']}")
    if values["num_gpu"] == 1 and values["gpu_milli"] == 0:
        raise fail("gpu_milli", "is 0 for a pod with num_gpu=1 (expected 1..1000)")
    if "creation_time" in raw:
        qos = raw["qos"] or None
        if qos is not None and qos not in QOS_PRIORITY:
            raise fail("qos", f"unknown QoS class {qos!r} (known: {', '.join(QOS_PRIORITY)})")
        created = seconds("creation_time", required=True)
        deleted = seconds("deletion_time", required=False)
        if created is not None and deleted is not None and deleted < created:
            raise fail("deletion_time", f"{raw['deletion_time']} is before creation_time {raw['creation_time']}")
        values |= {
            "gpu_spec": raw["gpu_spec"],
            "qos": qos,
            "pod_phase": raw["pod_phase"] or None,
            "creation_time": created,
            "deletion_time": deleted,
            "scheduled_time": seconds("scheduled_time", required=False),
        }
    return TraceRow(**values)


# --- gpu_milli → MIG profile ---------------------------------------------------------------------------------


class GpuMilliMapping(BaseModel):
    """How a trace pod's GPU request becomes MIG devices (a modelling choice; the trace has no MIG).

    A GPU-sharing pod (num_gpu == 1) asks for `gpu_milli`/1000 of a GPU's compute. That share times the model's
    compute slices (7 on A100/H100-class GPUs) gives the slices it needs: rounded up (`"up"`, never starves a
    pod, the default) or to the nearest whole slice (`"nearest"`, halves round up; never below 1). The pod gets
    the smallest plain profile (no `+me`) with at least that many compute slices, and of several with the same
    slice count the one with least memory (1g.10gb, not 1g.20gb), since the trace records no memory need. A100
    has no 5g or 6g profile, so 5 or 6 slices become 7g. Multi-GPU pods (num_gpu ≥ 2, always gpu_milli 1000)
    become `num_gpu` devices of `whole_gpu_profile` (`multi_gpu="whole"`) or are dropped (`"skip"`); CPU-only
    pods (num_gpu == 0) need no GPU and are always dropped. GPU-type constraints (`gpu_spec`) name non-MIG
    models and are ignored. On A100 this reproduces the table of spec papers-and-traces §2.1.5.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rounding: Literal["up", "nearest"] = "up"
    model: str = "A100-80GB"
    whole_gpu_profile: str = Field(default="", description="default: the model's full (all-slices) profile")
    multi_gpu: Literal["whole", "skip"] = "whole"

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        """Canonical model key and whole-GPU profile, so an unknown name fails when the mapping is made."""
        if not isinstance(data, dict):
            return data
        gpu = load_catalog().model(str(data.get("model", "A100-80GB")))
        whole = data.get("whole_gpu_profile")
        full = max(_ladder(gpu), key=lambda p: p.compute_slices).name
        return data | {"model": gpu.key, "whole_gpu_profile": gpu.profile(str(whole)).name if whole else full}

    @cached_property
    def gpu(self) -> GpuModel:
        return load_catalog().model(self.model)

    @cached_property
    def ladder(self) -> tuple[Profile, ...]:
        """The profiles shares map onto: one plain profile per compute-slice count, smallest first."""
        return _ladder(self.gpu)

    def slices_for(self, gpu_milli: int) -> int:
        """Compute slices a `gpu_milli` share needs before rounding to a profile (1..the model's slices)."""
        if not 1 <= gpu_milli <= 1000:
            raise MigoptError(f"gpu_milli must be 1..1000, got {gpu_milli}")
        scaled = gpu_milli * self.gpu.compute_slices  # in thousandths of a slice; integer maths, no float ties
        needed = -(-scaled // 1000) if self.rounding == "up" else (2 * scaled + 1000) // 2000
        return max(1, needed)

    def profile_for(self, gpu_milli: int) -> str:
        """The profile a one-GPU pod asking for `gpu_milli` thousandths of a GPU gets."""
        needed = self.slices_for(gpu_milli)
        return next(p.name for p in self.ladder if p.compute_slices >= needed)

    def compute_slices(self, profile: str) -> int:
        return self.gpu.profile(profile).compute_slices

    def demand(self, row: TraceRow) -> tuple[str, int] | None:
        """(profile, device count) for a trace row, or None when the row is dropped (CPU-only, skipped multi-GPU)."""
        if row.num_gpu == 0:
            return None
        if row.num_gpu == 1:
            return self.profile_for(row.gpu_milli), 1
        return (self.whole_gpu_profile, row.num_gpu) if self.multi_gpu == "whole" else None


def _ladder(gpu: GpuModel) -> tuple[Profile, ...]:
    """One plain profile per compute-slice count (the least memory), smallest first."""
    best: dict[int, Profile] = {}
    for p in gpu.profiles:
        if "+" in p.name:
            continue
        kept = best.get(p.compute_slices)
        if kept is None or p.memory_mib < kept.memory_mib:
            best[p.compute_slices] = p
    return tuple(best[s] for s in sorted(best))


def sized_requests(requests: Mapping[str, int], models: Sequence[GpuModel]) -> tuple[SizedRequest, ...]:
    """The same demand as `requests`, as a per-pod allocator reads it: n devices of profile P become n devices of at
    least P's memory and compute slices (HAMi's `nvidia.com/gpumem` and `gpucores`, a DRA claim's capacity
    selector), P's figures taken on the first of `models` that has it. A replay passes the mapping's model first,
    so a pod mapped to `2g.20gb` asks for at least that profile's 19,968 MiB and 2 compute slices, and every
    policy gets the same demand. Empty when some request is not a MIG profile any model has (such a pod stays
    pending under a per-pod allocator, as it would under the others)."""
    sized = []
    for resource, count in sorted(requests.items()):
        if not resource.startswith(MIG_RESOURCE_PREFIX):
            return ()
        profile = profile_from_resource(resource)
        model = next((m for m in models if m.has_profile(profile)), None)
        if model is None:
            return ()
        found = model.profile(profile)
        sized.append(SizedRequest(count=count, memory_mib=found.memory_mib, compute_slices=found.compute_slices))
    return tuple(sized)


class TraceSummary(BaseModel):
    """What a mapping makes of a trace: what is dropped and how many one-GPU pods get each profile."""

    model_config = ConfigDict(frozen=True)

    rows: int
    cpu_only: int
    fractional: int = Field(description="num_gpu == 1 and gpu_milli < 1000")
    multi_gpu: int
    multi_gpu_dropped: int
    single_gpu_profiles: dict[str, int] = Field(description="profile → pods, num_gpu == 1 rows only")


def summarise(rows: Sequence[TraceRow], mapping: GpuMilliMapping) -> TraceSummary:
    """Counts for reports and checks against the spec's table (§2.1.4, §2.1.5)."""
    singles = Counter(mapping.profile_for(r.gpu_milli) for r in rows if r.num_gpu == 1)
    multi = sum(r.num_gpu >= 2 for r in rows)
    return TraceSummary(
        rows=len(rows),
        cpu_only=sum(r.num_gpu == 0 for r in rows),
        fractional=sum(r.num_gpu == 1 and r.gpu_milli < 1000 for r in rows),
        multi_gpu=multi,
        multi_gpu_dropped=multi if mapping.multi_gpu == "skip" else 0,
        single_gpu_profiles={p.name: singles[p.name] for p in mapping.ladder if singles[p.name]},
    )


# --- replay modes --------------------------------------------------------------------------------------------


def default_replay(rows: Sequence[TraceRow]) -> Literal["timed", "inflate"]:
    """Timed replay when every row has its timestamps, else FGD-style inflation."""
    return "timed" if rows and all(r.has_times for r in rows) else "inflate"


def _kept(rows: Sequence[TraceRow], mapping: GpuMilliMapping) -> list[tuple[TraceRow, str, int]]:
    kept = [(r, *d) for r in rows if (d := mapping.demand(r)) is not None]
    log.info(
        "trace rows=%d kept=%d dropped=%d (cpu-only or skipped multi-GPU)", len(rows), len(kept), len(rows) - len(kept)
    )
    return kept


def inflate(
    rows: Sequence[TraceRow],
    mapping: GpuMilliMapping,
    capacity_slices: int,
    target_share: float = 1.0,
    seed: int = 0,
) -> list[WorkloadPod]:
    """FGD's protocol: draw rows with replacement until the requested compute slices reach `target_share` of
    `capacity_slices`; pods arrive one a second in draw order and never leave.

    It measures how much of a cluster a policy can fill before fragmentation stops it, not queueing or JCT.
    Each draw gets a unique name (`<trace name>-<draw>`); the last draw may overshoot the target by one pod.
    """
    if capacity_slices < 1:
        raise MigoptError(f"capacity_slices must be at least 1, got {capacity_slices}")
    if not target_share > 0:
        raise MigoptError(f"target_share must be positive, got {target_share}")
    pool = _kept(rows, mapping)
    if not pool:
        raise MigoptError("inflate: no GPU pods left in the trace after mapping (all CPU-only or skipped)")
    rng = random.Random(seed)
    target = target_share * capacity_slices
    width = max(5, len(str(math.ceil(target))))
    pods: list[WorkloadPod] = []
    requested = 0
    while requested < target:
        row, profile, count = pool[rng.randrange(len(pool))]
        index = len(pods)
        pods.append(_pod(row, f"{row.name}-{index:0{width}d}", float(index), None, profile, count))
        requested += mapping.compute_slices(profile) * count
    return pods


def active_start(rows: Sequence[TraceRow]) -> float:
    """Where a trace's active period begins: its 1st-percentile creation time.

    The default trace spans 149 days but 99.6 % of its pods come in the last 34; replaying from t = 0 would
    spend months on a handful of pods. This is the latest time with at least 99 % of the rows at or after it.
    """
    created = sorted(r.creation_time for r in rows if r.creation_time is not None)
    if len(created) != len(rows) or not created:
        raise MigoptError(TIMED_NEEDS_TIMES)
    return created[len(created) // 100]


def timed(
    rows: Sequence[TraceRow],
    mapping: GpuMilliMapping,
    time_scale: float = 1.0,
    start_s: float | None = None,
    window_s: float | None = None,
) -> list[WorkloadPod]:
    """Replay the trace's own clock: arrival (creation − start)/time_scale, duration (deletion − creation)/scale.

    `time_scale` > 1 compresses time (10 → ten times faster). `start_s` defaults to `active_start`; rows created
    before the start are dropped, as are arrivals after `window_s` when given. A row without a deletion time
    runs until the simulation ends. Pods come sorted by arrival, trace order breaking ties.
    """
    if not rows or not all(r.has_times for r in rows):
        raise MigoptError(TIMED_NEEDS_TIMES)
    if not time_scale > 0:
        raise MigoptError(f"time_scale must be positive, got {time_scale}")
    if window_s is not None and window_s < 0:
        raise MigoptError(f"window_s must not be negative, got {window_s}")
    start = active_start(rows) if start_s is None else start_s
    pods: list[WorkloadPod] = []
    for row, profile, count in _kept(rows, mapping):
        assert row.creation_time is not None  # checked above
        arrival = (row.creation_time - start) / time_scale
        if arrival < 0 or (window_s is not None and arrival > window_s):
            continue
        duration = None if row.deletion_time is None else (row.deletion_time - row.creation_time) / time_scale
        pods.append(_pod(row, row.name, arrival, duration, profile, count))
    pods.sort(key=lambda p: p.arrival_s)
    return pods


def _pod(row: TraceRow, name: str, arrival: float, duration: float | None, profile: str, count: int) -> WorkloadPod:
    return WorkloadPod(
        name=name,
        arrival_s=arrival,
        duration_s=duration,
        requests={resource_name(profile): count},
        priority=row.priority,
        source=f"trace:{row.name}",
    )


# --- synthetic workloads -------------------------------------------------------------------------------------


class SyntheticWorkload(BaseModel):
    """A Poisson stream of one-device MIG pods; every random choice comes from `random.Random(seed)`.

    Weights need not sum to 1. `duration_mean_s` is the mean of either distribution; `duration_sigma` is the
    lognormal's shape (its log-space standard deviation). Generation stops at `pods` pods or at `horizon_s`,
    whichever comes first.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    arrival_rate_per_s: float = Field(gt=0.0)
    duration_mean_s: float = Field(gt=0.0)
    duration_dist: Literal["exponential", "lognormal"] = "exponential"
    duration_sigma: float = Field(default=1.0, gt=0.0)
    profile_mix: dict[str, float] = Field(min_length=1)
    priorities: dict[int, float] = Field(default={0: 1.0}, min_length=1)
    selector_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    selectors: list[dict[str, str]] = []
    pods: int | None = Field(default=None, ge=0)
    horizon_s: float | None = Field(default=None, ge=0.0)
    seed: int = 0

    @field_validator("profile_mix", "priorities")
    @classmethod
    def _weights(cls, weights: dict[Any, float]) -> dict[Any, float]:
        if any(w < 0 or not math.isfinite(w) for w in weights.values()) or not sum(weights.values()) > 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        return weights

    @model_validator(mode="after")
    def _bounded(self) -> SyntheticWorkload:
        if self.pods is None and self.horizon_s is None:
            raise ValueError("set pods or horizon_s (or both), else generation never stops")
        if self.selector_fraction > 0 and not self.selectors:
            raise ValueError("selector_fraction > 0 needs at least one entry in selectors")
        return self


def generate(spec: SyntheticWorkload) -> list[WorkloadPod]:
    """Pods for the spec, sorted by arrival; the same spec (seed included) always gives the same list."""
    catalog = load_catalog()
    unknown = [p for p in spec.profile_mix if not any(m.has_profile(p) for m in catalog.models)]
    if unknown:
        raise MigoptError(f"profile_mix: unknown MIG profile {unknown[0]!r} (not in any catalog model)")
    # Sorted so that the same mix written in another order draws the same pods.
    profiles = sorted(spec.profile_mix)
    profile_weights = [spec.profile_mix[p] for p in profiles]
    priorities = sorted(spec.priorities)
    priority_weights = [spec.priorities[p] for p in priorities]
    limit = spec.pods if spec.pods is not None else math.inf
    width = max(6, len(str(spec.pods or 0)))
    rng = random.Random(spec.seed)
    pods: list[WorkloadPod] = []
    clock = 0.0
    while len(pods) < limit:
        clock += rng.expovariate(spec.arrival_rate_per_s)
        if spec.horizon_s is not None and clock > spec.horizon_s:
            break
        profile = rng.choices(profiles, profile_weights)[0]
        priority = rng.choices(priorities, priority_weights)[0]
        duration = _duration(rng, spec)
        selector = dict(rng.choice(spec.selectors)) if rng.random() < spec.selector_fraction else {}
        pods.append(
            WorkloadPod(
                name=f"syn-{len(pods):0{width}d}",
                arrival_s=clock,
                duration_s=duration,
                requests={resource_name(profile): 1},
                priority=priority,
                node_selector=selector,
                source="synthetic",
            )
        )
    return pods


def _duration(rng: random.Random, spec: SyntheticWorkload) -> float:
    if spec.duration_dist == "exponential":
        return rng.expovariate(1.0 / spec.duration_mean_s)
    sigma = spec.duration_sigma
    return rng.lognormvariate(math.log(spec.duration_mean_s) - sigma * sigma / 2, sigma)
