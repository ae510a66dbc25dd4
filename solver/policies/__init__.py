"""Planning policies by name: the one place that knows which exist.

A policy is a module here with a `plan` function of the `Planner` shape; registering it is one line in
`PLANNERS`. The policy modules never import this registry, so it can import them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from solver.errors import MigoptError
from solver.plan import Plan, PlanPolicy
from solver.policies import greedy, optimal, proactive
from solver.snapshot import ClusterSnapshot


class Planner(Protocol):
    """Plans a snapshot under a policy's limits; the plan is validated before it is returned.

    `dump_model`: write the CP-SAT model of the first solve there as text; `MigoptError` when none is built.
    `as_json`: the plan will be written as JSON (`solver.plan_json`): a policy may write parts of it ahead.
    """

    def __call__(
        self, snapshot: ClusterSnapshot, policy: PlanPolicy, *, dump_model: Path | None = None, as_json: bool = False
    ) -> Plan: ...


PLANNERS: dict[str, Planner] = {
    "greedy": greedy.plan,
    "optimal": optimal.plan,
    "proactive": proactive.plan,
}
FORECAST_READERS = frozenset({"proactive"})  # the policies that read the snapshot's forecast


def planner_names() -> list[str]:
    """The registered policy names, sorted."""
    return sorted(PLANNERS)


def check_planner_name(name: str) -> str:
    """`name` if a policy is registered under it (case-sensitive); else a one-line `MigoptError` naming them all."""
    if name not in PLANNERS:
        raise MigoptError(f"unknown policy {name!r}: known policies are {', '.join(planner_names())}")
    return name


def get_planner(name: str) -> Planner:
    """The policy registered under `name`; `MigoptError` (as `check_planner_name`) when there is none."""
    return PLANNERS[check_planner_name(name)]
