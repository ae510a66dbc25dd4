"""The indexed repair of stranded several-device pods decides exactly what a plain scan of every node would."""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver import repair as repair_module
from solver.assemble import draft
from solver.cpsat import GeometryModel
from solver.decisions import Decisions, Device
from solver.demand import Demand, rejection
from solver.disaggregate import _drop_idle_reconfigurations, _index, _place
from solver.plan import PlanPolicy, PlanStatus
from solver.problem import Problem, build_problem
from solver.snapshot import NodeState, parse_snapshot


class _FreshCaps:
    """The caps recounted from the whole plan on every question, as the repair did before it kept counts."""

    def __init__(self, problem: Problem, decisions: Decisions) -> None:
        self.problem, self.decisions = problem, decisions
        self.changing_count = 0

    def allow(self, node: NodeState, new: dict[int, dict[str, int]]) -> bool:
        policy = self.problem.policy
        if policy.max_evictions is None and policy.max_reconfigurations is None:
            return True
        gpus = self.problem.gpu_index()
        changing = {ref for ref, t in self.decisions.targets.items() if t != gpus[ref][1].mig_devices}
        changing |= {(node.name, i) for i in new}
        evicted = {p for ref in changing for p in gpus[ref][1].holders}
        return (policy.max_evictions is None or len(evicted) <= policy.max_evictions) and (
            policy.max_reconfigurations is None or len(changing) <= policy.max_reconfigurations
        )

    def record(self, node: NodeState, decisions: Decisions) -> None:
        return None


def _plain_scan(problem: Problem, decisions: Decisions, passes: tuple[bool, ...]) -> None:
    """Every stranded pod (pod groups in order) tries, pass by pass (False: no new evictions, True: holders may
    be displaced), every node in name order until one takes it."""
    stranded: list[Demand] = [
        d for g in problem.pod_groups for d in g.demands if d.devices > 1 and d.pod.name not in decisions.placements
    ]
    used: dict[str, set[Device]] = defaultdict(set)
    for devices in decisions.placements.values():
        for device in devices:
            used[device.node].add(device)
    caps: Any = _FreshCaps(problem, decisions)
    nodes = sorted(problem.snapshot.nodes, key=lambda n: n.name)
    for demand in stranded:
        needed = {k.rsplit(":", 1)[-1] for k, _ in demand.resources}
        accepting = [
            node
            for node in nodes
            if needed <= {p for g in node.gpus for p in g.gpu_model.profile_names} and rejection(node, demand) is None
        ]
        for evict, node in [(evict, node) for evict in passes for node in accepting]:
            on = repair_module._repair_single_on if node.strategy == "single" else repair_module._repair_on
            taken = on(problem, decisions, node, demand, used[node.name], caps, evict=evict)
            if taken:
                used[node.name].update(taken)
                break


@st.composite
def _cases(draw: st.DrawFn) -> tuple[ClusterSpec, PlanPolicy]:
    spec = ClusterSpec(
        nodes=draw(st.integers(2, 12)),
        gpus_per_node=draw(st.integers(1, 4)),
        pending_pods=draw(st.integers(5, 60)),
        used_fraction=draw(st.sampled_from([0.3, 0.6, 0.9])),
        multi_device_fraction=draw(st.sampled_from([0.3, 0.6])),
        selector_fraction=draw(st.sampled_from([0.0, 0.3])),
        pools=draw(st.integers(1, 3)),
        fragmented=draw(st.booleans()),
        seed=draw(st.integers(0, 10_000)),
    )
    policy = PlanPolicy(
        max_evictions=draw(st.sampled_from([None, 0, 2, 5])),
        max_reconfigurations=draw(st.sampled_from([None, 1, 3, 8])),
        protect_priority=draw(st.sampled_from([1000, 100])),
    )
    return spec, policy


def _placed(case: tuple[ClusterSpec, PlanPolicy]) -> tuple[Problem, Decisions] | None:
    """The case's problem and the decisions disaggregation reaches before the repair."""
    spec, policy = case
    problem = build_problem(parse_snapshot(generate_snapshot(spec)), policy)
    if not problem.demands:
        return None
    answer = GeometryModel(problem).solve(5.0)
    if answer is None:
        return None
    decisions = Decisions()
    free = _index(problem, answer, decisions)
    _place(problem, answer, free, decisions)
    return problem, decisions


def attempted(problem: Problem, decisions: Decisions, passes: tuple[int, ...]) -> repair_module._Attempt:
    """One of the repair's scans over the pods `decisions` left stranded, with these passes, once it has run."""
    stranded = repair_module._stranded(problem, decisions)
    nodes = repair_module._NodeIndex(problem, [pods[0] for _, pods in stranded])
    context, remembered = repair_module.RepairContext(problem), repair_module._Remembered()
    free = repair_module._EvictionFree(decisions)
    attempt = repair_module._Attempt(problem, decisions, context, remembered, free, passes)
    attempt.run(stranded, nodes)
    return attempt


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases(), st.sampled_from([(False, True), (True,)]))
def test_indexed_repair_matches_the_plain_scan(case: tuple[ClusterSpec, PlanPolicy], passes: tuple[bool, ...]) -> None:
    """Both scans the repair runs (eviction-free first, and name order alone) decide what a plain scan does."""
    placed = _placed(case)
    if placed is None:
        return
    problem, decisions = placed
    plain = copy.deepcopy(decisions)
    attempt = attempted(problem, decisions, passes)
    _plain_scan(problem, plain, passes)
    assert attempt.decisions.placements == plain.placements
    assert attempt.decisions.targets == plain.targets


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_preferring_eviction_free_nodes_never_serves_less_or_evicts_more(case: tuple[ClusterSpec, PlanPolicy]) -> None:
    """Against the name-order scan alone, the repair serves as much weight and, serving the same, evicts no more."""
    placed = _placed(case)
    if placed is None:
        return
    problem, decisions = placed
    plain = copy.deepcopy(decisions)
    repair_module.repair(problem, decisions)
    _plain_scan(problem, plain, (True,))
    mine, theirs = (
        draft(problem, d, status=PlanStatus.FEASIBLE, policy_name="optimal", solve_seconds=0.0, bound=None).objectives
        for d in (_dropped(problem, decisions), _dropped(problem, plain))
    )
    assert mine.served_weight >= theirs.served_weight
    if mine.served_weight == theirs.served_weight:
        assert mine.evicted_weight <= theirs.evicted_weight


def _dropped(problem: Problem, decisions: Decisions) -> Decisions:
    _drop_idle_reconfigurations(problem, decisions)
    return decisions


def _held_gpu_snapshot() -> dict[str, Any]:
    """Node a's GPU serves a low-priority pod on one of seven 1g.5gb; node b's, the same map, serves nobody."""
    seven = [{"profile": "1g.5gb", "start": start, "pod": None} for start in range(7)]
    held = [{**seven[0], "pod": "batch/low"}, *seven[1:]]
    return {
        "nodes": [
            {"name": "a", "gpus": [{"index": 0, "model": "A100-SXM4-40GB", "instances": held}]},
            {"name": "b", "gpus": [{"index": 0, "model": "A100-SXM4-40GB", "instances": seven}]},
        ],
        "running": [{"name": "batch/low", "priority": 0}],
        "pods": [{"name": "train/two", "requests": {"nvidia.com/mig-3g.20gb": 2}, "priority": 100}],
    }


def test_a_stranded_pod_goes_where_nobody_is_evicted_before_anywhere_first_in_name_order() -> None:
    """Node a comes first in name order and its holder may be displaced, but node b takes the pod for free."""
    problem = build_problem(parse_snapshot(_held_gpu_snapshot()), PlanPolicy())
    decisions = Decisions()
    repair_module.repair(problem, decisions)
    assert {d.node for d in decisions.placements["train/two"]} == {"b"}
    assert list(decisions.targets) == [("b", 0)]


def test_a_stranded_pod_still_displaces_holders_when_no_node_is_free() -> None:
    raw = _held_gpu_snapshot()
    raw["nodes"] = raw["nodes"][:1]
    problem = build_problem(parse_snapshot(raw), PlanPolicy())
    decisions = Decisions()
    repair_module.repair(problem, decisions)
    assert {d.node for d in decisions.placements["train/two"]} == {"a"}
    assert list(decisions.targets) == [("a", 0)]


def test_the_name_order_scan_wins_when_going_eviction_free_would_leave_a_pod_out() -> None:
    """Sent to node b, the heavy pod would take the only GPU the light one (which may displace nobody) can use;
    displacing node a's holder for the heavy pod serves both."""
    raw = _held_gpu_snapshot()
    raw["pods"].append({"name": "train/light", "requests": {"nvidia.com/mig-3g.20gb": 2}, "priority": 0})
    problem = build_problem(parse_snapshot(raw), PlanPolicy())
    decisions = Decisions()
    repair_module.repair(problem, decisions)
    assert {d.node for d in decisions.placements["train/two"]} == {"a"}
    assert {d.node for d in decisions.placements["train/light"]} == {"b"}
