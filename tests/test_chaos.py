"""A CI-sized run of benchmarks/chaos.py: three randomised fault schedules, each against fresh `migopt twin serve`
and `migopt run --mode enforce` processes on loopback; no pod is evicted that no plan named, none twice, no node
is left cordoned, and every schedule converges (the burst served, no change active) within its horizon."""

from __future__ import annotations

import json

from benchmarks.chaos import Timing, draw, run_chaos


def test_schedules_are_reproducible_from_seed_and_index() -> None:
    timing = Timing()
    assert draw(7, 2, timing) == draw(7, 2, timing)
    assert {f.kind for i in range(30) for f in draw(7, i, timing).faults} == {
        "api", "watch", "kill", "leader", "failed", "stuck", "forged", "lie",
    }  # fmt: skip


def test_three_chaos_schedules_keep_the_safety_invariants() -> None:
    result = run_chaos(3, seed=11, timing=Timing(horizon_s=22.0))
    details = json.dumps(result["runs"], indent=1)
    assert result["errors"] == 0, details
    assert result["unplanned_evictions"] == 0, details
    assert result["double_evictions"] == 0, details
    assert result["nodes_left_cordoned"] == 0, details
    assert result["unconverged"] == 0, details
    assert result["controller_tracebacks"] == 0, details
