"""Simulator speed: the built-in scenario, or a scenario file, per policy. Prints JSON.

Run: .venv/bin/python benchmarks/simulate.py [SCENARIO.yaml] [--policies P1,P2]

Per policy: the wall time, simulated seconds per wall second, and where the wall time went: `planner_s` inside
the planner (`make_plan`), `snapshot_s` reading the twin's cluster for the controller, `twin_s` the twin's own
events (arrivals, scheduling, mig-manager runs, completions, and all of a peer's work: `nos`, `hami` and `dra`
run inside the twin's events), `controller_s` the rest of the controller's ticks (actuation, isolation, events).
The split wraps those four calls with a timer for the run; nothing else changes.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optimizer.controller.reconcile as reconcile
from optimizer.controller.reconcile import Controller
from simulations.engine import run_policy, workload_pods
from simulations.scenario import Scenario, default_scenario, load_scenario
from simulations.twin.cluster import Twin


class Stopwatch:
    """Seconds spent inside each wrapped callable (nested calls count in each of their wrappers)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def timing(self, name: str, owner: Any, attribute: str) -> Iterator[None]:
        original: Callable[..., Any] = getattr(owner, attribute)
        self.seconds[name] = 0.0

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        setattr(owner, attribute, timed)
        try:
            yield
        finally:
            setattr(owner, attribute, original)


def measure(scenario: Scenario, policy: str) -> dict[str, Any]:
    """One policy on the scenario's pods, with the wall time split as the module docstring says."""
    pods = workload_pods(scenario)
    watch = Stopwatch()
    with (
        watch.timing("planner", reconcile, "make_plan"),
        watch.timing("snapshot", Twin, "snapshot"),
        watch.timing("twin", Twin, "run_until"),
        watch.timing("tick", Controller, "tick"),
    ):
        started = time.perf_counter()
        result = run_policy(scenario, policy, pods)
        wall = time.perf_counter() - started
    spent = watch.seconds
    return {
        "wall_s": round(wall, 2),
        "simulated_s_per_wall_s": round(scenario.horizon_s / wall, 1),
        "planner_s": round(spent["planner"], 2),
        "snapshot_s": round(spent["snapshot"], 2),
        "twin_s": round(spent["twin"], 2),
        "controller_s": round(spent["tick"] - spent["planner"] - spent["snapshot"], 2),
        "served_pods": result.served_pods,
        "arrived_pods": result.arrived_pods,
        "pending_seconds_p50": result.pending_seconds_p50,
        "pending_seconds_p95": result.pending_seconds_p95,
        "final_allocation": result.final_allocation,
        "slice_allocation": result.slice_allocation,
        "reconfigurations": result.reconfigurations,
        "evictions": result.evictions,
        "instance_creations": result.instance_creations,
        "operand_restarts": result.operand_restarts,
        "plans": result.plans,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", type=Path, help="scenario YAML (default: the built-in one)")
    parser.add_argument("--policies", help="comma-separated; default: the scenario's")
    args = parser.parse_args()
    scenario = load_scenario(args.scenario) if args.scenario else default_scenario()
    policies = args.policies.split(",") if args.policies else scenario.policies
    started = time.perf_counter()
    figures = {policy: measure(scenario, policy) for policy in policies}
    total = time.perf_counter() - started
    print(json.dumps({"benchmark": "simulate", "scenario": scenario.name, "total_wall_s": round(total, 2),
                      "simulated_hours": scenario.horizon_s / 3600, "policies": figures}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
