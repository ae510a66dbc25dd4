"""A plan written as JSON with its lines written ahead (`solver.plan_json`) is the text written in one pass."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import FrozenInstanceError, asdict, replace

import pytest
from pydantic import TypeAdapter

from migopt.render import json_text
from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver import plan_json as plan_json_module
from solver.checkpoint import Abandoned
from solver.plan import GpuPlan, Plan, PlanPolicy, PodPlacement
from solver.plan_json import line_json, plan_json, written_lines
from solver.policies import optimal, proactive
from solver.problem import Problem, build_problem
from solver.snapshot import parse_snapshot
from solver.timing import PlanClock
from tests.cli_runner import run_cli

EXAMPLE = "examples/snapshot.yaml"


def _one_pass(plan: Plan) -> bytes:
    return plan.model_dump_json(indent=2, ensure_ascii=True).encode("ascii")


@pytest.fixture(scope="module")
def written_plan() -> Plan:
    snapshot = parse_snapshot(generate_snapshot(ClusterSpec(nodes=40, pending_pods=200, fragmented=True, seed=3)))
    return optimal.plan(snapshot, PlanPolicy(time_limit_s=5.0), as_json=True)


def test_the_lines_written_ahead_are_spliced_into_the_same_text(written_plan: Plan) -> None:
    written = written_plan._written_lines
    kept = [line for line in written_plan.gpus if id(line) in written]
    assert written_plan.objectives.reconfigured_gpus > 0 and len(kept) == len(written_plan.gpus) - sum(
        line.reconfigure for line in written_plan.gpus
    )  # every line but the rebuilt ones was written ahead
    assert plan_json(written_plan) == _one_pass(written_plan)
    assert json_text(written_plan) == _one_pass(written_plan).decode() + "\n"


def test_a_plan_made_without_asking_writes_nothing_ahead() -> None:
    snapshot = parse_snapshot(generate_snapshot(ClusterSpec(nodes=10, pending_pods=40, seed=1)))
    made = optimal.plan(snapshot, PlanPolicy())
    assert made._written_lines == {}
    assert plan_json(made) == _one_pass(made)


def test_a_line_replaced_after_writing_is_written_afresh(written_plan: Plan) -> None:
    """Only the very object a text was written from takes that text: a copy with a change (what the proactive
    policy does to the lines it reshapes) is serialised as it is now."""
    first = written_plan.gpus[0]
    assert id(first) in written_plan._written_lines
    changed = written_plan.model_copy(update={"gpus": [replace(first, forecast=True), *written_plan.gpus[1:]]})
    assert changed._written_lines is written_plan._written_lines  # copied along with the plan
    assert plan_json(changed) == _one_pass(changed)
    assert b'"forecast": true' in plan_json(changed)


def test_lines_are_frozen_so_a_written_text_cannot_go_stale(written_plan: Plan) -> None:
    with pytest.raises(FrozenInstanceError):
        written_plan.gpus[0].reconfigure = not written_plan.gpus[0].reconfigure


def test_a_line_is_indented_as_an_item_of_the_plans_gpus_array(written_plan: Plan) -> None:
    line = written_plan.gpus[0]
    assert json.loads(line_json(line)) == json.loads(json.dumps(asdict(line)))
    assert line_json(line).startswith(b'    {\n      "node": ') and line_json(line).endswith(b"\n    }")


def test_a_plan_without_gpus_is_written_in_one_pass(written_plan: Plan) -> None:
    empty = written_plan.model_copy(update={"gpus": []})
    assert plan_json(empty) == _one_pass(empty)


def test_the_proactive_policy_passes_the_request_on() -> None:
    snapshot = parse_snapshot(generate_snapshot(ClusterSpec(nodes=10, pending_pods=40, seed=2)))
    made = proactive.plan(snapshot, PlanPolicy(), as_json=True)
    assert made._written_lines and plan_json(made) == _one_pass(made)


def test_the_command_writes_the_plan_it_made(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "plan", "--snapshot", EXAMPLE, "-o", "json")
    assert result.code == 0, result.err
    plan = Plan.model_validate_json(result.out)
    assert result.out == _one_pass(plan).decode() + "\n"


def _prepared_with_json(solve_ended_first: bool) -> Problem:
    snapshot = parse_snapshot(generate_snapshot(ClusterSpec(nodes=10, pending_pods=40, seed=4)))
    problem = build_problem(snapshot, PlanPolicy())
    with ThreadPoolExecutor(max_workers=1) as thread:
        alongside = optimal._Alongside(thread, problem, PlanClock(2.0), snapshot, as_json=True)
        if solve_ended_first:
            alongside.solve_ended()
        alongside.draft()
    return problem


def test_the_lines_are_written_ahead_only_while_the_solve_goes_on() -> None:
    """Once the solve has returned, the main thread wants the interpreter lock: writing ahead stops (at its
    checkpoints) and the lines are written at the end."""
    assert _prepared_with_json(solve_ended_first=True).kept_lines_json is None
    written = _prepared_with_json(solve_ended_first=False).kept_lines_json
    assert written is not None and len(written) == 80


def test_writing_stops_at_a_checkpoint() -> None:
    lines = list(optimal_lines())
    calls = []

    def stop_on_second() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise Abandoned

    with pytest.raises(Abandoned):
        written_lines(lines * 1000, stop_on_second)
    assert len(calls) == 2


def optimal_lines() -> list[GpuPlan]:
    snapshot = parse_snapshot(generate_snapshot(ClusterSpec(nodes=2, pending_pods=4, seed=1)))
    return optimal.plan(snapshot, PlanPolicy()).gpus


def test_a_plan_whose_lines_were_mostly_not_written_is_written_in_one_pass(
    written_plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing lines one by one is slower than one pass: with most lines unwritten, none is written singly."""
    copies = written_plan.model_copy(update={"gpus": [replace(line) for line in written_plan.gpus]})
    monkeypatch.setattr("solver.plan_json.line_json", lambda line: pytest.fail("a line written singly"))
    assert plan_json(copies) == _one_pass(copies)


def test_a_kept_line_is_the_line_validation_would_build(written_plan: Plan) -> None:
    """`GpuPlan.kept` does not validate the snapshot's facts again: each such line equals, and is written as, the
    line validation builds from the same values."""
    kept = [line for line in written_plan.gpus if not line.reconfigure]
    assert kept
    for line in kept:
        validated = GpuPlan(**asdict(line))
        assert line == validated
        assert line_json(line) == line_json(validated)


def test_a_placement_is_the_placement_validation_would_build(written_plan: Plan) -> None:
    """`PodPlacement.placed` does not validate the plan's decisions again: each placement equals, and is written
    as, the placement validation builds from the same values."""
    assert written_plan.placements
    for placement in written_plan.placements:
        validated = PodPlacement(pod=placement.pod, node=placement.node, devices=list(placement.devices))
        assert placement == validated
        assert _PLACEMENT.dump_json(placement) == _PLACEMENT.dump_json(validated)


_PLACEMENT = TypeAdapter(PodPlacement)


def test_lines_alike_are_written_once_with_their_node_and_index_put_in(written_plan: Plan) -> None:
    """Kept lines of one layout share its map and layout, and a plan none of whose lines were written ahead
    writes them alike (no line of a layout met before is serialised again) into the same text as one pass."""
    kept = [line for line in written_plan.gpus if not line.reconfigure]
    layouts = {tuple(line.layout) for line in kept}
    assert len({id(line.layout) for line in kept}) == len(layouts) < len(kept)
    assert all(line.current is line.target for line in kept)
    fresh = written_plan.model_copy()  # the same lines, none written ahead
    fresh._written_lines = {}
    serialised: list[GpuPlan] = []
    real = plan_json_module.line_json

    def counted(line: GpuPlan) -> bytes:
        serialised.append(line)
        return real(line)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plan_json_module, "line_json", counted)
        assert plan_json(fresh) == _one_pass(fresh)
    assert len({id(line.layout) for line in serialised if not line.reconfigure}) == len(serialised) - sum(
        line.reconfigure for line in serialised
    )  # each kept layout serialised once


@pytest.mark.parametrize("node", ['gpu-"quoted"', "back\\slash", "nœud-7", "tab\tnode", "plain-node.example"])
def test_a_line_is_written_as_one_pass_writes_it_whatever_its_node_name(node: str) -> None:
    """A node's name is put into a line written alike only when JSON writes it as it is; any other is written
    whole, escaped as the serialiser escapes it."""
    first = GpuPlan.kept("node-a", 0, "A100-SXM4-40GB", {"1g.5gb": 7}, [("1g.5gb", i) for i in range(7)])
    alike = GpuPlan.kept(node, 3, first.model, first.current, first.layout)
    evicting = GpuPlan(**{**asdict(alike), "evict": ["pod-1"], "target": {"7g.40gb": 1}, "reconfigure": True})
    write = plan_json_module._LineWriter()
    for line in (first, alike, evicting, alike):
        assert write(line) == line_json(line)
