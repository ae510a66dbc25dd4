"""Figures of one simulated run per policy, and the plots comparing them.

Definitions (spec/papers-and-traces.md §3):
- `served_pods`: pods that started running before the horizon.
- `pending_seconds_p50/p95`: time from arrival to start; a pod still waiting at the horizon counts with the time
  it had waited then (censored), so a policy cannot look fast by never starting the hard pods.
- `slice_allocation`: time-weighted mean share of the cluster's compute slices held by running pods;
  `final_allocation`: the share at the horizon, the figure of an inflate replay (FGD's allocation rate once
  all demand has arrived).
- `reconfigurations`: node layout changes as a whole: mig-manager runs that went through `pending` and succeeded
  (migopt's planners), nos agent applies that changed a GPU; per-pod allocators (HAMi, DRA) make none.
- `evictions`: pods evicted (only migopt's controller evicts).
- `instance_creations`: MIG instances created: by mig-parted in mig-manager's runs, by nos's agent, one per
  device of each pod under HAMi and DRA.
- `operand_restarts`: restarts of GPU operands: every mig-manager run that paused the device plugin and GFD (and
  the rest of the node's GPU clients), every device-plugin restart by nos's agent.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

from pydantic import BaseModel, Field

from solver.errors import MigoptError

PLOTS_INSTALL = "pip install 'migopt[plots]'"


class Sample(BaseModel):
    """The cluster at one instant of simulated time."""

    time_s: float
    allocated_slices: int
    total_slices: int
    pending_pods: int


class PodTimes(BaseModel):
    name: str
    arrival_s: float
    started_s: float | None


class PolicyResult(BaseModel):
    policy: str
    served_pods: int
    arrived_pods: int
    pending_seconds_p50: float
    pending_seconds_p95: float
    slice_allocation: float = Field(description="time-weighted mean share of compute slices allocated")
    final_allocation: float = Field(description="share allocated at the horizon: inflate replay's figure")
    reconfigurations: int
    evictions: int
    instance_creations: int = Field(default=0, description="MIG instances created, whoever created them")
    operand_restarts: int = Field(default=0, description="mig-manager operand pauses and device-plugin restarts")
    plans: int
    wall_seconds: float
    samples: list[Sample] = Field(default=[], exclude=True)


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def waits(pods: list[PodTimes], horizon_s: float) -> list[float]:
    return [(p.started_s if p.started_s is not None else horizon_s) - p.arrival_s for p in pods]


def time_weighted_allocation(samples: list[Sample], horizon_s: float) -> float:
    """Mean of allocated/total over time, each sample holding until the next (or the horizon)."""
    if not samples:
        return 0.0
    total = 0.0
    for current, following in zip(samples, [*samples[1:], None], strict=True):
        end = following.time_s if following is not None else horizon_s
        span = max(0.0, end - current.time_s)
        total += span * (current.allocated_slices / current.total_slices if current.total_slices else 0.0)
    covered = max(horizon_s - samples[0].time_s, 1e-9)
    return total / covered


def load_pyplot() -> ModuleType:
    """matplotlib's pyplot on the file-only backend. matplotlib is the optional `plots` extra (only `simulate
    --output-dir` draws, and the images leave it out), so its absence is a one-line error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise MigoptError(
            f"--output-dir draws plots with matplotlib, which is not installed: {PLOTS_INSTALL}"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(results: list[PolicyResult], out_dir: Path) -> list[Path]:
    """Allocation and pending pods over time, one line per policy, as PNG files."""
    plt = load_pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, title, value in (
        ("allocation.png", "share of compute slices allocated", lambda s: s.allocated_slices / max(s.total_slices, 1)),
        ("pending.png", "pending pods", lambda s: float(s.pending_pods)),
    ):
        figure, axes = plt.subplots(figsize=(9, 4.5))
        for result in results:
            hours = [s.time_s / 3600 for s in result.samples]
            axes.step(hours, [value(s) for s in result.samples], where="post", label=result.policy)
        axes.set_xlabel("simulated time (h)")
        axes.set_ylabel(title)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = out_dir / name
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written
