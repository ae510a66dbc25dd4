"""The aggregated problem's unit keys and the CP-SAT model's sections: what the planner relies on them for."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver import problem as problem_module
from solver.cpsat import GeometryModel
from solver.plan import PlanPolicy
from solver.problem import Problem, UnitKey, build_problem
from solver.scope import PlanScope
from solver.snapshot import parse_snapshot


def _problem(policy: PlanPolicy | None = None) -> Problem:
    spec = ClusterSpec(nodes=6, gpus_per_node=4, pending_pods=40, multi_device_fraction=0.2, pools=2, seed=3)
    return build_problem(parse_snapshot(generate_snapshot(spec)), policy or PlanPolicy())


def test_units_are_classed_by_distinct_keys_and_cover_every_gpu() -> None:
    problem = _problem()
    keys = [u.key for u in problem.units]
    assert len(set(keys)) == len(keys) and all(isinstance(k, UnitKey) for k in keys)
    unit = problem.units[0]
    assert unit.key.model == unit.model.key and unit.key.gpus_per_member == unit.gpus_per_member
    members = sum(len(u.members) * u.gpus_per_member for u in problem.units)
    assert members == sum(len(n.gpus) for n in problem.snapshot.nodes)


def test_building_the_problem_twice_gives_the_same_units_in_the_same_order() -> None:
    first, second = _problem(), _problem()
    assert [(u.key, u.members) for u in first.units] == [(u.key, u.members) for u in second.units]
    assert [g.key for g in first.reconfig_groups] == [g.key for g in second.reconfig_groups]


def test_the_model_text_is_what_the_first_solve_gets_and_does_not_change_the_answer() -> None:
    problem = _problem()
    plain, dumped = GeometryModel(problem), GeometryModel(problem)
    text = dumped.as_text()
    assert text == GeometryModel(problem).as_text()
    assert text.startswith("variables {") and "objective {" in text
    a, b = plain.solve(), dumped.solve()
    assert a is not None and b is not None
    assert (a.reconfigured, a.targets, a.served, a.objective) == (b.reconfigured, b.targets, b.served, b.objective)


def test_policy_caps_become_constraints_and_workers_come_from_the_policy() -> None:
    free = GeometryModel(_problem()).model.Proto()
    capped = GeometryModel(_problem(PlanPolicy(max_evictions=0, max_reconfigurations=1, workers=2)))
    assert len(capped.model.Proto().constraints) == len(free.constraints) + 2
    assert capped._solver().parameters.num_workers == 2


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 10_000),
    st.sampled_from([0.3, 0.6, 0.9]),
    st.booleans(),
    st.sampled_from([100, 1000]),
    st.booleans(),
)
def test_a_gpus_unit_key_is_what_its_unit_would_have(
    seed: int, used: float, fragmented: bool, floor: int, some_unmanaged: bool
) -> None:
    """The shortcut that classes mixed-strategy GPUs without building a unit per GPU gives each the same key."""
    spec = ClusterSpec(nodes=8, gpus_per_node=4, pending_pods=60, used_fraction=used, fragmented=fragmented, seed=seed)
    snapshot = parse_snapshot(generate_snapshot(spec))
    if some_unmanaged:
        nodes = [n.model_copy(update={"unmanaged": "test"}) if i % 2 else n for i, n in enumerate(snapshot.nodes)]
        snapshot = snapshot.model_copy(update={"nodes": nodes})
    data = problem_module._pending_data(snapshot)
    factory = problem_module._UnitFactory(
        snapshot, PlanPolicy(protect_priority=floor), data, problem_module._TargetCache(data.keys, PlanScope()),
        problem_module._signatures(snapshot.nodes, data.representative),
    )  # fmt: skip
    layouts: dict[tuple[object, ...], Any] = {}
    for node in snapshot.nodes:
        for gpu, key in zip(node.gpus, factory.mixed_keys(node, node.gpus, layouts), strict=True):
            free, idle = problem_module._free_capacity(gpu), problem_module._idle_slices(gpu, data.keys, "mixed")
            unit = factory.unit(problem_module._MemberState(node, [gpu], "mixed", free, idle))
            assert key == unit.key
