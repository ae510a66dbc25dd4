"""The policies `migopt simulate` compares, by name.

- `static:<config>`: an administrator's fixed geometry (a standard mig-parted config name), no controller;
- any planner of `solver.policies` (`greedy`, `optimal`, …): the real controller, planning with it.

An unknown name is a one-line `MigoptError` listing the known ones, wherever a name is taken (flag, scenario file).
"""

from __future__ import annotations

from solver.errors import MigoptError
from solver.policies import PLANNERS, planner_names

STATIC_PREFIX = "static:"


def simulation_policy_names() -> list[str]:
    """What the error message and `--help` list: the static form, then every registered planner."""
    return [f"{STATIC_PREFIX}<config>", *planner_names()]


def check_simulation_policy(name: str) -> str:
    """The name, if it names a policy; otherwise a `MigoptError` listing the known ones."""
    if name in PLANNERS or (name.startswith(STATIC_PREFIX) and name != STATIC_PREFIX):
        return name
    raise MigoptError(f"unknown policy {name!r}: known policies are {', '.join(simulation_policy_names())}")


def static_config(name: str) -> str | None:
    """The config a `static:<config>` policy holds every GPU at; None for a planner."""
    return name.removeprefix(STATIC_PREFIX) if name.startswith(STATIC_PREFIX) else None
