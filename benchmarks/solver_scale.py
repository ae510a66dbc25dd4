"""Solver scale and quality figures: prints JSON.

Run: .venv/bin/python benchmarks/solver_scale.py            (all cases, median of 3 runs each)
     .venv/bin/python benchmarks/solver_scale.py --quick    (small cases only, one run: CI's smoke step)

Each case runs in a fresh process so its peak memory (max RSS) is its own. Clusters are synthetic
(`simulations.synthetic_cluster`): mixed A100-40GB/A100-80GB/H100-80GB nodes, about half the instances in use,
about a fifth of the pods with node selectors, 5 % asking for two devices.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver.plan import PlanPolicy
from solver.planner import make_plan
from solver.problem import build_problem
from solver.snapshot import parse_snapshot

SCALE_CASES = [
    {"name": "1000 nodes x 8 GPUs, 5000 pods", "nodes": 1000, "pods": 5000, "time_limit": 2.0},
    {"name": "5000 nodes x 8 GPUs, 20000 pods", "nodes": 5000, "pods": 20000, "time_limit": 10.0},
]
QUALITY_CASES = [
    {"name": "random, 200 nodes x 8 GPUs, 1500 pods", "nodes": 200, "pods": 1500, "fragmented": False},
    {"name": "fragmented, 200 nodes x 8 GPUs, 600 pods", "nodes": 200, "pods": 600, "fragmented": True},
]
QUICK_CASES = [{"name": "quick: 50 nodes x 8 GPUs, 250 pods", "nodes": 50, "pods": 250, "time_limit": 2.0}]


def run_case(case: dict[str, Any], seed: int) -> dict[str, Any]:
    """One measurement, in this process: timings of each phase, plan quality, peak memory."""
    spec = ClusterSpec(
        nodes=case["nodes"], pending_pods=case["pods"], fragmented=case.get("fragmented", False), seed=seed
    )
    raw = generate_snapshot(spec)
    t0 = time.perf_counter()
    snapshot = parse_snapshot(raw)
    t1 = time.perf_counter()
    policy = PlanPolicy(time_limit_s=case.get("time_limit", 2.0))
    problem = build_problem(snapshot, policy)
    t2 = time.perf_counter()
    greedy = make_plan(snapshot, policy, "greedy")
    t3 = time.perf_counter()
    optimal = make_plan(snapshot, policy, "optimal")
    t4 = time.perf_counter()
    return {
        "parse_s": t1 - t0,
        "aggregate_s": t2 - t1,
        "greedy_plan_s": t3 - t2,
        "optimal_plan_s": t4 - t3,
        "solve_s": optimal.solve_seconds,
        "units": len(problem.units),
        "pod_groups": len(problem.pod_groups),
        "status": optimal.status,
        "gap": optimal.gap,
        "optimal_served_weight": optimal.objective,
        "greedy_served_weight": greedy.objective,
        "optimal_served_pods": optimal.objectives.served_pods,
        "greedy_served_pods": greedy.objectives.served_pods,
        "evicted_pods": optimal.objectives.evicted_pods,
        "reconfigured_gpus": optimal.objectives.reconfigured_gpus,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(case: dict[str, Any], runs: int) -> dict[str, Any]:
    """Median over `runs` fresh processes (seeds 1..runs) of every numeric figure; statuses listed."""
    samples = []
    for seed in range(1, runs + 1):
        done = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(case), str(seed)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        samples.append(json.loads(done.stdout))
    summary: dict[str, Any] = {"case": case["name"], "runs": runs}
    for key, value in samples[0].items():
        if isinstance(value, str):
            summary[key] = sorted({s[key] for s in samples})
        else:
            summary[key] = round(statistics.median(s[key] for s in samples), 4)
    summary["served_ratio_optimal_over_greedy"] = round(
        statistics.median(s["optimal_served_weight"] / max(s["greedy_served_weight"], 1) for s in samples), 4
    )
    return summary


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(run_case(json.loads(sys.argv[2]), int(sys.argv[3]))))
        return
    if "--quick" in sys.argv:
        results = [measure(c, 1) for c in QUICK_CASES]
    else:
        results = [measure(c, 3) for c in SCALE_CASES + QUALITY_CASES]
    print(json.dumps({"benchmark": "solver_scale", "results": results}, indent=2))


if __name__ == "__main__":
    main()
