"""Disaggregation's index of free devices copies what kept nodes offer instead of walking every member of a unit
that changes; it must be the index a walk over every member builds, down to the order of nodes and devices (the
first node and device in each list is the one a pod takes)."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver.cpsat import AggregateSolution, GeometryModel
from solver.decisions import Decisions, advertises_nothing
from solver.disaggregate import FreeIndex, _choose_members, _index, _targets
from solver.plan import PlanPolicy
from solver.problem import Problem, build_problem
from solver.snapshot import parse_snapshot


def _walked(problem: Problem, answer: AggregateSolution, decisions: Decisions) -> FreeIndex:
    """Every member of every unit, in order: its target's devices when it is chosen, else its free devices."""
    chosen = _choose_members(problem, answer)
    target_of = _targets(problem, answer, chosen)
    pool_index = {pool: i for i, pool in enumerate(problem.pools)}
    group_of_unit = {u: gi for gi, g in enumerate(problem.reconfig_groups) for u in g.units}
    free: FreeIndex = defaultdict(dict)
    for ui, unit in enumerate(problem.units):
        for member in unit.members:
            node, _ = problem.gpu_index()[member.node, member.gpus[0]]
            gpus = [g for g in node.gpus if g.index in member.gpus]
            ti = target_of.get(member)
            if ti is None:
                if advertises_nothing(node, {}):
                    continue
                pool, target = unit.pool, None
            else:
                pool = unit.reconfig_pool
                target = dict(problem.reconfig_groups[group_of_unit[ui]].targets[ti].devices)
                for gpu in gpus:
                    decisions.targets[node.name, gpu.index] = target
            for gpu in gpus:
                for key, device in problem.keyed_devices(node, gpu, target):
                    free[pool_index[pool], key].setdefault(node.name, []).append(device)
    return free


def _ordered(free: FreeIndex, wanted: frozenset[str]) -> dict[tuple[int, str], list[tuple[str, list[object]]]]:
    """Each table of a resource key some pod asks for, its nodes and devices in order (devices of other keys are
    never read, and a kept unit's are not indexed)."""
    return {k: list(v.items()) for k, v in free.items() if v and k[1] in wanted}


def _rebuilding(problem: Problem, picks: list[tuple[int, int]]) -> AggregateSolution:
    """An answer that rebuilds a quarter to all (`share` of 4) of the members of the reconfigurable units picked,
    each group's to targets none of its picked units holds now: what disaggregation reads of an answer."""
    reconfigurable = [u for u, unit in enumerate(problem.units) if unit.reconfigurable]
    shares = {reconfigurable[pick % len(reconfigurable)]: share for pick, share in picks} if reconfigurable else {}
    reconfigured: dict[int, int] = {}
    targets: dict[int, list[int]] = {}
    for gi, group in enumerate(problem.reconfig_groups):
        units = [u for u in group.units if u in shares]
        currents = {problem.units[u].current for u in units}
        usable = [ti for ti, t in enumerate(group.targets) if t.as_current not in currents]
        if not units or not usable:
            continue
        counts = [0] * len(group.targets)
        for n, u in enumerate(units):
            reconfigured[u] = max(1, len(problem.units[u].members) * shares[u] // 4)
            counts[usable[n % len(usable)]] += reconfigured[u]
        targets[gi] = counts
    return AggregateSolution(reconfigured, targets, {}, {}, False, 0, 0, 0.0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nodes=st.integers(2, 30),
    gpus=st.integers(1, 8),
    pods=st.integers(5, 60),
    used=st.sampled_from([0.0, 0.3, 0.6]),
    fragmented=st.booleans(),
    seed=st.integers(0, 10_000),
    picks=st.lists(st.tuples(st.integers(0, 50), st.integers(1, 4)), min_size=1, max_size=4),
)
def test_the_index_is_the_walk_over_every_member(
    nodes: int, gpus: int, pods: int, used: float, fragmented: bool, seed: int, picks: list[tuple[int, int]]
) -> None:
    """Members of the picked units rebuilt (a quarter to all of each), the rest kept: the same index."""
    spec = ClusterSpec(
        nodes=nodes, gpus_per_node=gpus, pending_pods=pods, used_fraction=used, fragmented=fragmented, seed=seed
    )
    problem = build_problem(parse_snapshot(generate_snapshot(spec)), PlanPolicy())
    if not problem.demands:
        return
    answer = _rebuilding(problem, picks)
    indexed, walked = Decisions(), Decisions()
    wanted = problem.keys
    assert _ordered(_index(problem, answer, indexed), wanted) == _ordered(_walked(problem, answer, walked), wanted)
    assert indexed.targets == walked.targets


def test_a_solved_answer_indexes_as_the_walk_does() -> None:
    """And on CP-SAT's own answer for a fragmented cluster."""
    spec = ClusterSpec(nodes=20, gpus_per_node=8, pending_pods=80, fragmented=True, seed=3)
    problem = build_problem(parse_snapshot(generate_snapshot(spec)), PlanPolicy())
    answer = GeometryModel(problem).solve(5.0)
    assert answer is not None and answer.reconfigured
    indexed, walked = Decisions(), Decisions()
    wanted = problem.keys
    assert _ordered(_index(problem, answer, indexed), wanted) == _ordered(_walked(problem, answer, walked), wanted)
    assert indexed.targets == walked.targets
