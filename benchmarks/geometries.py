"""How long `migopt geometries` takes per GPU model: the enumeration alone, and the whole command.

Run: .venv/bin/python benchmarks/geometries.py  (prints JSON; median of 5 runs each)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from solver.catalog import load_catalog
from solver.geometry import _all_maps, feasible_maps

RUNS = 5


def median_seconds(action: object) -> float:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        action()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    rows = []
    for model in load_catalog().models:

        def enumerate_cold(model=model) -> None:  # type: ignore[no-untyped-def]
            _all_maps.cache_clear()
            feasible_maps(model)

        def whole_command(model=model) -> None:  # type: ignore[no-untyped-def]
            cmd = [sys.executable, "-m", "migopt", "geometries", "--gpu", model.key, "-o", "json"]
            subprocess.run(cmd, check=True, capture_output=True)

        rows.append(
            {
                "model": model.key,
                "maps": len(feasible_maps(model)),
                "enumerate_ms": round(median_seconds(enumerate_cold) * 1000, 2),
                "command_s": round(median_seconds(whole_command), 3),
            }
        )
    print(json.dumps({"benchmark": "geometries", "runs": RUNS, "models": rows}, indent=2))


if __name__ == "__main__":
    main()
