"""Wall time of one planning run, split into phases, against the policy's time limit for the whole run.

The time limit bounds the whole of planning (aggregation, the greedy baseline, CP-SAT, disaggregation, assembly,
validation), not CP-SAT alone: CP-SAT gets what is left once the rest is paid for, so a plan arrives within the
limit however large the cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from solver.plan import PlanTimings


class PlanClock:
    """Started when planning starts; phases add up their wall time under their names, in the order first seen."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.started = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - began)

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        """Seconds of the limit not spent yet (negative once it is overrun)."""
        return self.limit_s - self.elapsed()

    def exclude(self, seconds: float) -> None:
        """Leave time spent on something the limit does not cover (writing a model file) out of the run."""
        self.started += seconds

    def timings(self) -> PlanTimings:
        return PlanTimings(
            cpsat_seconds=round(self.phases.get("cpsat", 0.0), 4),
            total_seconds=round(self.elapsed(), 4),
            phases={name: round(seconds, 4) for name, seconds in self.phases.items()},
        )
