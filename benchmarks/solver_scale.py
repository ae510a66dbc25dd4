"""Solver scale and quality figures: prints JSON.

Run: .venv/bin/python benchmarks/solver_scale.py            (all cases, median of 3 runs each)
     .venv/bin/python benchmarks/solver_scale.py --quick    (small cases only, one run: CI's smoke step)
     .venv/bin/python benchmarks/solver_scale.py --whole-command [--quick]   (only `migopt plan` as a user runs it)
     .venv/bin/python benchmarks/solver_scale.py --scaling [--fragmented] [--runs N] [--max-nodes N]
                                                 (100 to 10,000 nodes: each phase's time, CP-SAT's, the whole run's)
     .venv/bin/python benchmarks/solver_scale.py --forecast-cost [--runs N]
                                                 (the expected-demand term: the same cases with and without a forecast)
     .venv/bin/python benchmarks/solver_scale.py --json-output [--max-nodes N]
                                                 (writing a plan as JSON: lines written ahead spliced in, or one pass)
     add --fragmented to the default run for fragmented clusters in its scale cases.

Each case runs in a fresh process so its peak memory (max RSS) is its own. Clusters are synthetic
(`simulations.synthetic_cluster`): mixed A100-40GB/A100-80GB/H100-80GB nodes, about half the instances in use,
about a fifth of the pods with node selectors, 5 % asking for two devices.
"""

from __future__ import annotations

import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver.plan import Plan, PlanPolicy
from solver.plan_json import plan_json_chunks, written_lines
from solver.planner import make_plan
from solver.policies import optimal
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
WHOLE_COMMAND_CASES = [  # time limits as in the scaling table: 2 s up to 1,000 nodes, then 1 s per 500 nodes
    {"name": "migopt plan, 1000 nodes x 8 GPUs, 5000 pods", "nodes": 1000, "pods": 5000, "time_limit": 2.0},
    {"name": "migopt plan, 5000 nodes x 8 GPUs, 25000 pods", "nodes": 5000, "pods": 25000, "time_limit": 10.0},
    {"name": "migopt plan, 10000 nodes x 8 GPUs, 50000 pods", "nodes": 10000, "pods": 50000, "time_limit": 20.0},
    {
        "name": "migopt plan, fragmented, 1000 nodes x 8 GPUs, 5000 pods",
        "nodes": 1000,
        "pods": 5000,
        "time_limit": 2.0,
        "fragmented": True,
    },
]
QUICK_WHOLE_COMMAND_CASES = [
    {"name": "quick: migopt plan, 50 nodes x 8 GPUs, 250 pods", "nodes": 50, "pods": 250, "time_limit": 2.0}
]


def run_case(case: dict[str, Any], seed: int) -> dict[str, Any]:
    """One measurement, in this process: timings of each phase, plan quality, peak memory."""
    spec = ClusterSpec(
        nodes=case["nodes"], pending_pods=case["pods"], fragmented=case.get("fragmented", False), seed=seed
    )
    raw = generate_snapshot(spec)
    if case.get("forecast"):
        raw["forecast"] = forecast_like(raw["pods"])
    policy = PlanPolicy(time_limit_s=case.get("time_limit", 2.0))
    t0 = time.perf_counter()
    snapshot = parse_snapshot(raw)
    t1 = time.perf_counter()
    optimal = make_plan(snapshot, policy, "optimal")  # first, on a snapshot no other run has read (facts it
    t2 = time.perf_counter()  # remembers per GPU would otherwise be free)
    snapshot = parse_snapshot(raw)
    t3 = time.perf_counter()
    greedy = make_plan(snapshot, policy, "greedy")
    t4 = time.perf_counter()
    problem = build_problem(snapshot, policy)
    return {
        "parse_s": t1 - t0,
        "optimal_plan_s": t2 - t1,
        "greedy_plan_s": t4 - t3,
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
        **phase_figures(optimal, greedy),
    }


def forecast_like(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A forecast in the pending pods' image: each one-device mixed request shape, a tenth of its count expected."""
    counts: Counter[str] = Counter()
    for pod in pods:
        requests = pod["requests"]
        if len(requests) == 1 and next(iter(requests.values())) == 1 and not pod.get("node_selector"):
            counts[next(iter(requests))] += 1
    return [{"requests": {key: 1}, "count": max(1, n // 10)} for key, n in sorted(counts.items())]


FORECAST_COST_NODES = [200, 1000]


PHASES = ("aggregate", "greedy", "model", "cpsat", "disaggregate", "assemble", "validate")


def phase_figures(optimal: Plan, greedy: Plan) -> dict[str, float]:
    """Where the optimal plan's time went (`Plan.timings`): CP-SAT's own, the whole run's, what is outside CP-SAT,
    and each phase's (0 when it did not run); and the greedy plan's whole run."""
    timings = optimal.timings
    figures = {
        "cpsat_s": timings.cpsat_seconds,
        "total_s": timings.total_seconds,
        "outside_cpsat_s": timings.total_seconds - timings.cpsat_seconds,
    }
    figures |= {f"phase_{name}_s": timings.phases.get(name, 0.0) for name in PHASES}
    figures["greedy_total_s"] = greedy.timings.total_seconds
    return figures


SCALING_NODES = [100, 200, 500, 1000, 2000, 5000, 10000]


def scaling_cases(fragmented: bool, max_nodes: int) -> list[dict[str, Any]]:
    """The scaling table's rows: 8 GPUs and 5 pending pods per node; the time limit grows with the cluster
    (2 s up to 1,000 nodes, then 1 s per 500 nodes: 10 s at 5,000, 20 s at 10,000)."""
    kind = "fragmented" if fragmented else "random"
    return [
        {
            "name": f"{kind}, {nodes} nodes x 8 GPUs, {5 * nodes} pods",
            "nodes": nodes,
            "pods": 5 * nodes,
            "fragmented": fragmented,
            "time_limit": max(2.0, nodes / 500),
        }
        for nodes in SCALING_NODES
        if nodes <= max_nodes
    ]


JSON_OUTPUT_NODES = [1000, 5000, 10000]


def json_output(nodes: int, runs: int = 3) -> dict[str, Any]:
    """Seconds to write a plan as `migopt plan -o json` does (`solver.plan_json`: the pieces the command writes,
    the lines of GPUs that keep their maps written on the second thread during the solve), as it does when the
    solve ended before those lines were written (lines alike written once, at the end), and in one pass, median
    of `runs` on one plan; and the seconds writing those lines takes (on the second thread)."""
    spec = ClusterSpec(nodes=nodes, pending_pods=5 * nodes, seed=1)
    snapshot = parse_snapshot(generate_snapshot(spec))
    policy = PlanPolicy(time_limit_s=max(2.0, nodes / 500))
    plan = optimal.plan(snapshot, policy, as_json=True)
    kept = [line for line in plan.gpus if not line.reconfigure]
    gc.disable()  # as while planning and in the command (`solver.collector`)
    started = time.perf_counter()
    written = written_lines(kept)  # what the second thread writes, timed here (it may have stopped: the solve ended)
    ahead = time.perf_counter() - started
    unwritten = plan.model_copy()
    unwritten._written_lines = {}
    plan._written_lines = written
    spliced, at_the_end, one_pass = [], [], []
    for _ in range(runs):
        started = time.perf_counter()
        pieces = plan_json_chunks(plan)
        spliced.append(time.perf_counter() - started)
        started = time.perf_counter()
        late = plan_json_chunks(unwritten)
        at_the_end.append(time.perf_counter() - started)
        started = time.perf_counter()
        whole = Plan.__pydantic_serializer__.to_json(plan, indent=2, ensure_ascii=True)
        one_pass.append(time.perf_counter() - started)
    gc.enable()
    text = b"".join(pieces)
    return {
        "nodes": nodes, "gpus": len(plan.gpus), "megabytes": round(len(text) / 2**20, 1),
        "same_bytes": text == whole == b"".join(late),
        "spliced_s": round(statistics.median(spliced), 4), "written_at_end_s": round(statistics.median(at_the_end), 4),
        "one_pass_s": round(statistics.median(one_pass), 4), "written_ahead_s": round(ahead, 4),
    }  # fmt: skip


def _option(name: str, default: int) -> int:
    """`--name N` from the command line, else the default."""
    if name in sys.argv:
        return int(sys.argv[sys.argv.index(name) + 1])
    return default


def _medians(mode: str, case: dict[str, Any], runs: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Median over `runs` fresh processes (`mode`: --one or --whole-one; seeds 1..runs) of every numeric figure,
    statuses listed; and the samples."""
    samples = []
    for seed in range(1, runs + 1):
        done = subprocess.run(
            [sys.executable, __file__, mode, json.dumps(case), str(seed)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        samples.append(json.loads(done.stdout))
    summary: dict[str, Any] = {"case": case["name"], "runs": runs}
    for key, value in samples[0].items():
        if isinstance(value, str):
            summary[key] = sorted({s[key] for s in samples})
        else:
            summary[key] = round(statistics.median(s[key] for s in samples), 4)
    return summary, samples


def measure(case: dict[str, Any], runs: int) -> dict[str, Any]:
    """The in-process phases: median over fresh processes of every numeric figure; statuses listed."""
    summary, samples = _medians("--one", case, runs)
    summary["served_ratio_optimal_over_greedy"] = round(
        statistics.median(s["optimal_served_weight"] / max(s["greedy_served_weight"], 1) for s in samples), 4
    )
    return summary


def _import_seconds(importtime_log: str) -> float:
    """Total of `-X importtime`'s top-level cumulative times (lazy imports inside the command included)."""
    total_us = 0
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.removeprefix("import time:").split("|")
            if cumulative.strip().isdigit() and not name.startswith("  "):  # nested imports start with 2+ spaces
                total_us += int(cumulative)
    return total_us / 1e6


def run_whole_command(case: dict[str, Any], seed: int) -> dict[str, Any]:
    """`migopt plan --snapshot FILE.json -o json > PLAN.json` as a user runs it, in a child of this (fresh)
    process, so the child's peak RSS is `RUSAGE_CHILDREN`'s: wall time, time spent importing (per `-X
    importtime`), the rest. The plan goes to a file, not to a pipe this process reads: reading and decoding the
    50 MB of a 10,000-node plan from a pipe took this process 0.1-0.15 s that counted as the command's."""
    spec = ClusterSpec(
        nodes=case["nodes"], pending_pods=case["pods"], fragmented=case.get("fragmented", False), seed=seed
    )
    with tempfile.TemporaryDirectory() as folder:
        snapshot = Path(folder) / "snapshot.json"
        text = json.dumps(generate_snapshot(spec))
        snapshot.write_text(text, encoding="utf-8")
        command = [sys.executable, "-X", "importtime", "-m", "migopt", "plan", "--snapshot", str(snapshot)]
        command += ["--time-limit", str(case["time_limit"]), "-o", "json"]
        written = Path(folder) / "plan.json"
        with written.open("wb") as output:
            started = time.perf_counter()
            done = subprocess.run(command, stdout=output, stderr=subprocess.PIPE, text=True, check=False)
            wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"migopt plan failed ({done.returncode}): {done.stderr[-2000:]}")
        plan = json.loads(written.read_bytes())
    imports = _import_seconds(done.stderr)
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall_s": wall,
        "imports_s": imports,
        "after_imports_s": wall - imports,
        "cpu_s": child.ru_utime + child.ru_stime,  # CP-SAT workers included; steadier than wall on a busy host
        "solve_s": plan["solve_seconds"],
        "cpsat_s": plan["timings"]["cpsat_seconds"],
        "outside_cpsat_s": wall - imports - plan["timings"]["cpsat_seconds"],  # the goal's measure (issue 14)
        "status": plan["status"],
        "gap": plan["gap"],
        "snapshot_mib": len(text) / 2**20,
        "peak_rss_mib": child.ru_maxrss / 1024,
    }


def measure_whole_command(case: dict[str, Any], runs: int) -> dict[str, Any]:
    """The whole `migopt plan` command: median over fresh processes, as `measure` does for the phases."""
    summary, samples = _medians("--whole-one", case, runs)
    summary["max_peak_rss_mib"] = round(max(s["peak_rss_mib"] for s in samples), 1)
    return summary


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(run_case(json.loads(sys.argv[2]), int(sys.argv[3]))))
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--whole-one":
        print(json.dumps(run_whole_command(json.loads(sys.argv[2]), int(sys.argv[3]))))
        return
    if "--forecast-cost" in sys.argv:
        cases = [
            {"name": f"{n} nodes x 8 GPUs, {5 * n} pods{', forecast' if f else ''}", "nodes": n, "pods": 5 * n,
             "time_limit": 2.0, "forecast": f}
            for n in FORECAST_COST_NODES
            for f in (False, True)
        ]  # fmt: skip
        table = [measure(c, _option("--runs", 3)) for c in cases]
        print(json.dumps({"benchmark": "solver_scale", "forecast_cost": table}, indent=2))
        return
    if "--json-output" in sys.argv:
        limit = _option("--max-nodes", JSON_OUTPUT_NODES[-1])
        table = [json_output(n) for n in JSON_OUTPUT_NODES if n <= limit]
        print(json.dumps({"benchmark": "solver_scale", "json_output": table}, indent=2))
        return
    if "--scaling" in sys.argv:
        fragmented = "--fragmented" in sys.argv
        cases = scaling_cases(fragmented, _option("--max-nodes", SCALING_NODES[-1]))
        table = [measure(c, _option("--runs", 3)) for c in cases]
        print(json.dumps({"benchmark": "solver_scale", "scaling": table}, indent=2))
        return
    if "--whole-command" in sys.argv:
        quick = "--quick" in sys.argv
        cases = QUICK_WHOLE_COMMAND_CASES if quick else WHOLE_COMMAND_CASES
        whole = [measure_whole_command(c, 1 if quick else 3) for c in cases]
        print(json.dumps({"benchmark": "solver_scale", "whole_command": whole}, indent=2))
        return
    if "--quick" in sys.argv:
        results = [measure(c, 1) for c in QUICK_CASES]
        whole = [measure_whole_command(c, 1) for c in QUICK_WHOLE_COMMAND_CASES]
    else:
        fragmented = "--fragmented" in sys.argv
        scale = [{**c, "name": f"fragmented, {c['name']}", "fragmented": fragmented} for c in SCALE_CASES]
        results = [measure(c, 3) for c in scale + QUALITY_CASES]
        whole = [measure_whole_command(c, 3) for c in WHOLE_COMMAND_CASES]
    print(json.dumps({"benchmark": "solver_scale", "results": results, "whole_command": whole}, indent=2))


if __name__ == "__main__":
    main()
