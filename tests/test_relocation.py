"""Moving one-device pods off a node so that a stranded several-device pod can have it without evicting anyone:
valid plans, never worse than the repair without moves, and better where the moves apply."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver import repair as repair_module
from solver.assemble import score
from solver.checkpoint import carry_on
from solver.cpsat import GeometryModel
from solver.decisions import Decisions, Device
from solver.disaggregate import _drop_idle_reconfigurations, _index, _place, disaggregate
from solver.plan import ObjectiveBreakdown, PlanPolicy
from solver.planner import make_plan
from solver.problem import Problem, build_problem
from solver.relocation import RelocationFacts, _SpareIndex
from solver.snapshot import parse_snapshot
from tests.test_repair_index import _cases, _placed, attempted


def _careful(problem: Problem, decisions: Decisions, passes: tuple[int, ...]) -> tuple[ObjectiveBreakdown, int]:
    """The repair's eviction-free-first scan with these passes: the plan's figures, and how many pods moved."""
    attempt = attempted(problem, decisions, passes)
    moved = sum(attempt.decisions.placements[p] != decisions.placements.get(p) for p in decisions.placements)
    _drop_idle_reconfigurations(problem, attempt.decisions)
    return score(problem, attempt.decisions), moved


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_moving_pods_never_serves_less_or_evicts_more(case: tuple[ClusterSpec, PlanPolicy]) -> None:
    placed = _placed(case)
    if placed is None:
        return
    problem, decisions = placed
    relocating, _ = _careful(problem, copy.deepcopy(decisions), (False, repair_module._RELOCATE, True))
    staying, _ = _careful(problem, copy.deepcopy(decisions), (False, True))
    assert relocating.served_weight >= staying.served_weight
    if relocating.served_weight == staying.served_weight:
        assert relocating.evicted_weight <= staying.evicted_weight


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_plans_that_move_pods_pass_the_plan_checks(case: tuple[ClusterSpec, PlanPolicy]) -> None:
    """`make_plan` refuses an invalid plan (a device used twice, a pod where its node rejects it, a cap
    exceeded) with an internal error: none is raised."""
    spec, policy = case
    make_plan(parse_snapshot(generate_snapshot(spec)), policy.model_copy(update={"time_limit_s": 10.0}))


def test_a_cluster_where_moving_pods_spares_every_eviction() -> None:
    """80 nodes, random: without moving one-device pods the repair evicts five pods' worth for a stranded
    several-device pod; with it, nobody, serving as much."""
    snapshot = parse_snapshot(generate_snapshot(ClusterSpec(nodes=80, pending_pods=480, seed=1)))
    problem = build_problem(snapshot, PlanPolicy())
    answer = GeometryModel(problem).solve(30.0)
    assert answer is not None
    before = Decisions()
    _place(problem, answer, _index(problem, answer, before), before)
    relocating, moved = _careful(problem, copy.deepcopy(before), (False, repair_module._RELOCATE, True))
    staying, _ = _careful(problem, copy.deepcopy(before), (False, True))
    assert moved > 0
    assert relocating.served_weight == staying.served_weight
    assert relocating.evicted_weight == 0 < staying.evicted_weight
    assert score(problem, disaggregate(problem, answer)) == relocating  # what the planner's repair does


def test_a_pod_moves_only_to_a_node_its_selector_accepts() -> None:
    """8 nodes × 2 GPUs: the one-device pod in the way selects on a label the stranded pod does not, so the nodes
    the repair tells apart by the stranded pods' labels are not what the mover may use; it moved onto a node its
    selector rejects before movers were checked against each node itself."""
    spec = ClusterSpec(nodes=8, gpus_per_node=2, pending_pods=20, used_fraction=0.5, seed=233)
    snapshot = parse_snapshot(generate_snapshot(spec))
    problem = build_problem(snapshot, PlanPolicy())
    answer = GeometryModel(problem).solve(10.0)
    assert answer is not None
    before = Decisions()
    _place(problem, answer, _index(problem, answer, before), before)
    moves = _careful(problem, copy.deepcopy(before), (False, repair_module._RELOCATE, True))[1]
    assert moves > 0
    plan = make_plan(snapshot, PlanPolicy(time_limit_s=10.0))  # raises on a placement a node rejects
    nodes = {n.name: n for n in snapshot.nodes}
    pods = {p.name: p for p in snapshot.pods}
    assert all(not pods[p.pod].node_selector.items() - nodes[p.node].labels.items() for p in plan.placements)


def _every_spare(
    problem: Problem, targets: dict[tuple[str, int], dict[str, int]], used: dict[str, set[Device]]
) -> dict[str, list[tuple[str, int, Device, int]]]:
    """Every unused device of the mixed-strategy nodes by key in node name order, with its GPU's target (by id):
    what indexing every node at once holds."""
    every: dict[str, list[tuple[str, int, Device, int]]] = {}
    for node in sorted(problem.snapshot.nodes, key=lambda n: n.name):
        if node.strategy != "mixed":
            continue
        for gpu in node.gpus:
            target = targets.get((node.name, gpu.index))
            for key, device in problem.keyed_devices(node, gpu, target):
                if device not in used.get(node.name, set()):
                    every.setdefault(key, []).append((node.name, gpu.index, device, id(target)))
    return every


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases(), st.integers(0, 3))
def test_the_spare_index_holds_the_devices_as_they_stood_when_made(
    case: tuple[ClusterSpec, PlanPolicy], asked_first: int
) -> None:
    """Indexed node by node as questions go, the spare devices are those unused when the index was made, with
    the targets then, whatever is used, freed or re-targeted after: what indexing every node then held."""
    placed = _placed(case)
    if placed is None:
        return
    problem, decisions = placed
    used: dict[str, set[Device]] = {}
    for devices in decisions.placements.values():
        for device in devices:
            used.setdefault(device.node, set()).add(device)
    expected = _every_spare(problem, decisions.targets, used)
    index = _SpareIndex(problem, decisions.targets, used, RelocationFacts(problem), carry_on)
    keys = sorted(expected)
    if keys:
        index.more(keys[asked_first % len(keys)])  # some nodes indexed before the cluster changes
    for name in list(used)[:2]:
        used[name].clear()  # freed
    for node in problem.snapshot.nodes[:2]:
        for gpu in node.gpus:
            used.setdefault(node.name, set()).update(d for _, d in problem.keyed_devices(node, gpu, None))
            decisions.targets[node.name, gpu.index] = {}  # re-targeted
    for key in keys:
        while index.more(key):
            pass
    got = {key: [(s.node.name, s.gpu.index, s.device, id(s.target)) for s in index.of(key)] for key in keys}
    assert got == expected
