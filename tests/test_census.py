"""The census unplaced-pod reasons read counts the same whether it reads each GPU's holders from the snapshot or
takes what aggregation already read of them (`Problem.holder_facts`)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver.explain import census
from solver.plan import PlanPolicy
from solver.problem import build_problem
from solver.snapshot import parse_snapshot


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(2, 20),
    st.sampled_from([0.3, 0.9]),
    st.booleans(),
    st.sampled_from([1000, 100, 0]),
    st.integers(0, 10_000),
)
def test_holder_facts_read_by_aggregation_count_the_same(
    nodes: int, used: float, fragmented: bool, protect_priority: int, seed: int
) -> None:
    spec = ClusterSpec(nodes=nodes, pending_pods=4 * nodes, used_fraction=used, fragmented=fragmented, seed=seed)
    policy = PlanPolicy(protect_priority=protect_priority)
    problem = build_problem(parse_snapshot(generate_snapshot(spec)), policy)
    counted = census(problem.snapshot, policy, problem.demands, problem.holder_facts)
    assert counted == census(problem.snapshot, policy, problem.demands)
    assert counted.gpus  # every GPU is counted, held or not


def test_a_gpu_whose_holders_the_policy_may_not_evict_is_counted_as_kept() -> None:
    """With every holder protected by priority, no GPU class a holder keeps reads as free to change."""
    spec = ClusterSpec(nodes=6, pending_pods=20, used_fraction=0.9, seed=4)
    policy = PlanPolicy(protect_priority=0)
    problem = build_problem(parse_snapshot(generate_snapshot(spec)), policy)
    counted = census(problem.snapshot, policy, problem.demands, problem.holder_facts)
    held = [gpu for gpu in counted.gpus if gpu.top is not None]
    assert held and all(gpu.protection is not None for gpu in held)
