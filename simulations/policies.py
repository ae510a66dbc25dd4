"""The policies `migopt simulate` compares, by name.

- `static:<config>`: an administrator's fixed geometry (a standard mig-parted config name), no controller;
- any planner of `solver.policies` (`greedy`, `optimal`, …): the real controller, planning with it;
- a peer of `simulations.peers` (`nos`, `hami`, `dra`): another system's dynamic MIG, modelled in the twin.

An unknown name is a one-line `MigoptError` listing the known ones, wherever a name is taken (flag, scenario file).
"""

from __future__ import annotations

from simulations.peers.registry import PEERS, Peer, peer_names
from solver.errors import MigoptError
from solver.policies import PLANNERS, planner_names

STATIC_PREFIX = "static:"


def simulation_policy_names() -> list[str]:
    """What the error message and `--help` list: the static form, every registered planner, then the peers."""
    return [f"{STATIC_PREFIX}<config>", *planner_names(), *peer_names()]


def check_simulation_policy(name: str) -> str:
    """The name, if it names a policy; otherwise a `MigoptError` listing the known ones."""
    if name in PLANNERS or name in PEERS or (name.startswith(STATIC_PREFIX) and name != STATIC_PREFIX):
        return name
    raise MigoptError(f"unknown policy {name!r}: known policies are {', '.join(simulation_policy_names())}")


def static_config(name: str) -> str | None:
    """The config a `static:<config>` policy holds every GPU at; None for a planner or a peer."""
    return name.removeprefix(STATIC_PREFIX) if name.startswith(STATIC_PREFIX) else None


def peer_policy(name: str) -> Peer | None:
    """The peer a name stands for; None for a static policy or a planner."""
    return PEERS.get(name)
