"""Fingerprints of plans over the benchmark's instances: did a change to the planner change any plan?

Run: .venv/bin/python benchmarks/plan_fingerprint.py --out before.json       (record)
     .venv/bin/python benchmarks/plan_fingerprint.py --compare before.json   (record again and compare; exit 1
                                                                             when some plan differs)
     add --quick for the small instances only.

Each instance is a synthetic cluster (`simulations.synthetic_cluster`, random and fragmented, several seeds and
sizes) planned by both policies, with one CP-SAT worker, a fixed seed and a time limit far above what the solve
needs, so that each stage is proven optimal and the plans are reproducible. A fingerprint holds the plan's
objective figures and a digest of everything else it decides (targets, evictions, placements, reasons); timings
and notes are left out. Prints JSON: per instance, the figures, and on `--compare` whether each still matches.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver.cpsat import AggregateSolution, GeometryModel
from solver.plan import Plan, PlanPolicy
from solver.planner import make_plan
from solver.snapshot import parse_snapshot

GENEROUS_LIMIT_S = 600.0
SIZES = [(50, 250, (1, 2, 3)), (200, 1000, (1, 2, 3)), (500, 2500, (1, 2)), (1000, 5000, (1,))]
QUICK_SIZES = [(50, 250, (1, 2, 3))]
CAPPED = [  # small instances again under the policy caps, which other code paths honour
    {"max_evictions": 3, "max_reconfigurations": 10},
    {"max_evictions": 0},
    {"protect_priority": 100},
]


def instances(quick: bool) -> list[dict[str, Any]]:
    """Every instance as (spec fields, policy fields), small first."""
    result = []
    for nodes, pods, seeds in QUICK_SIZES if quick else SIZES:
        for fragmented in (False, True):
            for seed in seeds:
                spec = {"nodes": nodes, "pending_pods": pods, "fragmented": fragmented, "seed": seed}
                result.append({"spec": spec, "policy": {}})
    for fields in CAPPED:
        for fragmented in (False, True):
            spec = {"nodes": 50, "pending_pods": 250, "fragmented": fragmented, "seed": 7}
            result.append({"spec": spec, "policy": fields})
    return result


def fingerprint(plan: Plan) -> dict[str, Any]:
    """The plan's figures, and a digest of what it decides (not how long it took or what it noted)."""
    decided = plan.model_dump(mode="json", include={"gpus", "placements", "unplaced"})
    digest = hashlib.sha256(json.dumps(decided, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "status": str(plan.status),
        "objective": plan.objective,
        "bound": plan.bound,
        **plan.objectives.model_dump(),
        "digest": digest,
    }


def record(quick: bool) -> list[dict[str, Any]]:
    rows = []
    for instance in instances(quick):
        snapshot = parse_snapshot(generate_snapshot(ClusterSpec(**instance["spec"])))
        policy = PlanPolicy(time_limit_s=GENEROUS_LIMIT_S, workers=1, **instance["policy"])
        row: dict[str, Any] = {**instance}
        for name in ("greedy", "optimal"):
            row[name] = fingerprint(make_plan(snapshot, policy, name))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def compare(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    """Instance by instance: identical plans, same figures with another digest, or different figures."""
    old = {json.dumps([r["spec"], r["policy"]], sort_keys=True): r for r in before}
    verdicts = []
    for row in after:
        key = json.dumps([row["spec"], row["policy"]], sort_keys=True)
        base = old.get(key)
        for name in ("greedy", "optimal"):
            if base is None:
                verdict = "not in the recording"
            elif base[name] == row[name]:
                verdict = "identical"
            elif {k: v for k, v in base[name].items() if k != "digest"} == {
                k: v for k, v in row[name].items() if k != "digest"
            }:
                verdict = "same figures, other plan"
            else:
                verdict = "different figures"
            verdicts.append({"spec": row["spec"], "policy": row["policy"], "planner": name, "verdict": verdict})
            if verdict != "identical" and base is not None:
                verdicts[-1].update(before=base[name], after=row[name])
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v["verdict"]] = counts.get(v["verdict"], 0) + 1
    return {"counts": counts, "differences": [v for v in verdicts if v["verdict"] != "identical"]}


def _skip_greedy_hint() -> None:
    """Make `GeometryModel.solve` ignore the greedy plan it may fall back to (as before it could)."""
    original = GeometryModel.solve

    def solve(
        self: GeometryModel,
        time_limit_s: float | None = None,
        fallback: Callable[[], AggregateSolution] | None = None,
    ) -> AggregateSolution | None:
        return original(self, time_limit_s)

    GeometryModel.solve = solve  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the fingerprints here")
    parser.add_argument("--compare", type=Path, help="compare with fingerprints recorded earlier")
    parser.add_argument("--quick", action="store_true", help="small instances only")
    parser.add_argument(
        "--without-greedy-hint",
        action="store_true",
        help="never restart CP-SAT from the greedy plan (to compare with recordings made before it could)",
    )
    args = parser.parse_args()
    if args.without_greedy_hint:
        _skip_greedy_hint()
    rows = record(args.quick)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    result: dict[str, Any] = {"benchmark": "plan_fingerprint", "instances": len(rows)}
    if args.compare:
        result |= compare(json.loads(args.compare.read_text()), rows)
    print(json.dumps(result, indent=2))
    if args.compare and result["differences"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
