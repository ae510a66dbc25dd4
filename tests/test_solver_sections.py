"""The aggregated problem's unit keys and the CP-SAT model's sections: what the planner relies on them for."""

from __future__ import annotations

from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver.cpsat import GeometryModel
from solver.plan import PlanPolicy
from solver.problem import Problem, UnitKey, build_problem
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
