"""Simulator speed: the built-in scenario, or a scenario file, per policy. Prints JSON.

Run: .venv/bin/python benchmarks/simulate.py [SCENARIO.yaml]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from simulations.engine import run_scenario
from simulations.scenario import default_scenario, load_scenario


def main() -> None:
    scenario = load_scenario(Path(sys.argv[1])) if len(sys.argv) > 1 else default_scenario()
    started = time.perf_counter()
    report = run_scenario(scenario)
    total = time.perf_counter() - started
    figures = {
        name: {
            "wall_s": r.wall_seconds,
            "served_pods": r.served_pods,
            "arrived_pods": r.arrived_pods,
            "final_allocation": r.final_allocation,
            "slice_allocation": r.slice_allocation,
            "plans": r.plans,
        }
        for name, r in report.policies.items()
    }
    print(json.dumps({"benchmark": "simulate", "scenario": scenario.name, "total_wall_s": round(total, 2),
                      "simulated_hours": scenario.horizon_s / 3600, "policies": figures}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
