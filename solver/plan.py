"""What a planner returns (the architecture guide's plan contract) and the knobs a plan is made under."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from enum import StrEnum
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from pydantic.dataclasses import dataclass as pydantic_dataclass

from solver.scope import PlanScope
from solver.snapshot import RunningPod


class PlanStatus(StrEnum):
    """How a plan came about; the values are the plan contract's `status` strings, so JSON output is unchanged."""

    OPTIMAL = "optimal"  # CP-SAT's served objective meets its proven bound
    FEASIBLE = "feasible"  # CP-SAT's plan, not proven optimal within the time limit
    GREEDY = "greedy"  # the greedy baseline, asked for by name
    GREEDY_FALLBACK = "greedy-fallback"  # the optimal policy returned the greedy plan: CP-SAT found none or a worse one
    EMPTY = "empty"  # no pending pod asks for MIG devices: nothing to plan


class PlanPolicy(BaseModel):
    """Limits and weights of one planning run. Defaults are what `migopt plan` uses."""

    time_limit_s: float = Field(
        default=2.0, gt=0, description="wall-clock limit for the whole planning run; CP-SAT gets what is left of it"
    )
    protect_priority: int = Field(
        default=1_000_000_000, description="running pods at or above this priority are never evicted"
    )
    max_evictions: int | None = Field(default=None, ge=0, description="cap on pods evicted by one plan")
    max_reconfigurations: int | None = Field(default=None, ge=0, description="cap on GPUs reconfigured by one plan")
    workers: int = Field(default=1, ge=1, description="CP-SAT workers; 1 keeps plans reproducible")
    scope: PlanScope = Field(default=PlanScope(), description="managed nodes and per-model target allowlists")
    forecast_share: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="proactive policy: at most this share of the idle GPUs' compute slices is reshaped for forecast "
        "demand",
    )

    def may_evict(self, pod: RunningPod) -> bool:
        """The one rule for which running pods a plan may evict: evictable ones below `protect_priority`."""
        return pod.evictable and pod.priority < self.protect_priority

    def may_evict_all(
        self, names: Iterable[str], known: Mapping[str, tuple[bool, int, int]], pod: Callable[[str], RunningPod]
    ) -> tuple[bool, int | None]:
        """Whether the plan may evict every named running pod (`may_evict`), and their top priority (None: no
        name). Read from `known` where it has a pod (what aggregation read of each, `Problem.holder_facts`: a
        dictionary lookup, where reading the pod again was most of the census's and the repair floors' work),
        else from `pod(name)`."""
        evictable, top = True, None
        for name in names:
            fact = known.get(name)
            if fact is None:
                running = pod(name)
                fact = (self.may_evict(running), running.priority, 0)
            evictable = evictable and fact[0]
            top = fact[1] if top is None or fact[1] > top else top
        return evictable, top


class DeviceAssignment(BaseModel):
    gpu: int
    profile: str
    start: int

    model_config = ConfigDict(frozen=True)  # plans share one per (gpu, profile, start) (`solver.assemble`)


@pydantic_dataclass(frozen=True, slots=True)
class PodPlacement:
    """Where a pending pod goes: a slotted dataclass like `GpuPlan`, a plan having one per placed pod."""

    pod: str
    node: str
    devices: list[DeviceAssignment]

    @classmethod
    def placed(cls, pod: str, node: str, devices: list[DeviceAssignment]) -> Self:
        """A placement of the plan's own decisions, built without validating them again (as `GpuPlan.kept`):
        the plan's checks (`solver.validate`) read every placement."""
        placement = object.__new__(cls)
        object.__setattr__(placement, "pod", pod)
        object.__setattr__(placement, "node", node)
        object.__setattr__(placement, "devices", devices)
        return placement


@pydantic_dataclass(frozen=True, slots=True)  # frozen: a line's JSON may be written ahead (`solver.plan_json`)
class GpuPlan:
    """One GPU's line of a plan. A slotted dataclass, not a model: a plan has a line per GPU (80,000 at 10,000
    nodes), and a model keeps a `__dict__` and a set of the fields given for each, more than half a line's
    memory. Copy one with `dataclasses.replace`."""

    node: str
    index: int
    model: str
    current: dict[str, int]
    target: dict[str, int]
    reconfigure: bool
    evict: list[str] = Field(default_factory=list)
    layout: list[tuple[str, int]] = Field(default_factory=list, description="target placements (profile, start)")
    forecast: bool = Field(default=False, description="reconfigured for forecast demand (proactive), not a pending pod")

    @classmethod
    def kept(cls, node: str, index: int, model: str, devices: dict[str, int], layout: list[tuple[str, int]]) -> Self:
        """The line of a GPU that keeps its map, from a validated snapshot's facts, built without validating them
        again: a plan has tens of thousands of these, and validating copies each map and layout (5.5–6 µs a line,
        against 2.3 µs built here, fastest of 5 on the same values). The plan's checks (`solver.validate`) read
        every line all the same. `devices` is the line's `current` and `target` both, as its map stays as it is;
        no reader changes a line's maps."""
        line = object.__new__(cls)
        values: tuple[object, ...] = (node, index, model, devices, devices, False, [], layout, False)
        for name, value in zip(_KEPT_FIELDS, values, strict=True):
            object.__setattr__(line, name, value)
        return line


_KEPT_FIELDS = tuple(f.name for f in fields(GpuPlan))  # the order `GpuPlan.kept` gives its values in


class UnplacedPod(BaseModel):
    pod: str
    reason: str


class ObjectiveBreakdown(BaseModel):
    """The lexicographic objective's terms: (1) served, then (2) disruption, then (3) fragmentation."""

    served_weight: int = Field(description="priority-weighted compute slices of pending pods served")
    served_pods: int
    evicted_weight: int = Field(description="priority-weighted evicted pods")
    evicted_pods: int
    reconfigured_gpus: int
    touched_nodes: int
    fragmentation: int = Field(description="free compute slices no pending request could use")


class PlanTimings(BaseModel):
    """Where one planning run's wall time went. The policy's time limit covers `total_seconds`."""

    cpsat_seconds: float = Field(default=0.0, description="CP-SAT's own solving, every stage and round")
    total_seconds: float = Field(default=0.0, description="the whole planning run, validation included")
    phases: dict[str, float] = Field(
        default={},
        description="seconds per phase: aggregate, model, cpsat, disaggregate, assemble, validate on the main "
        "thread; greedy, prepare and speculate on a second thread, alongside CP-SAT",
    )


WrittenLines = dict[int, tuple[GpuPlan, bytes]]
"""Lines of a plan's `gpus` written as JSON ahead (`solver.plan_json`): by the line's id, the line and its text."""


class Plan(BaseModel):
    status: PlanStatus
    policy: str = Field(description="the registered name of the policy that made the plan (solver.policies)")
    solve_seconds: float
    timings: PlanTimings = Field(default_factory=PlanTimings, description="CP-SAT's time and the whole run's")
    objective: int = Field(description="served_weight of the returned plan (the primary objective)")
    bound: int = Field(description="proven upper bound on served_weight")
    gap: float = Field(description="(bound - objective) / bound, 0 when bound is 0")
    objectives: ObjectiveBreakdown
    gpus: list[GpuPlan]
    placements: list[PodPlacement]
    unplaced: list[UnplacedPod]
    notes: list[str] = []
    _written_lines: WrittenLines = PrivateAttr(default_factory=dict)  # `solver.plan_json`

    @property
    def evictions(self) -> list[str]:
        return sorted({pod for gpu in self.gpus for pod in gpu.evict})
