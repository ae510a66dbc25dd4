"""The indexed repair of stranded several-device pods decides exactly what a plain scan of every node would."""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulations.synthetic_cluster import ClusterSpec, generate_snapshot
from solver import repair as repair_module
from solver.cpsat import GeometryModel
from solver.decisions import Decisions, Device
from solver.demand import Demand, rejection
from solver.disaggregate import _index, _place
from solver.plan import PlanPolicy
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


def _plain_scan(problem: Problem, decisions: Decisions) -> None:
    """Every stranded pod (pod groups in order) tries every node in name order until one takes it."""
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
        for node in nodes:
            profiles = {p for g in node.gpus for p in g.gpu_model.profile_names}
            if needed <= profiles and rejection(node, demand) is None:
                on = repair_module._repair_single_on if node.strategy == "single" else repair_module._repair_on
                taken = on(problem, decisions, node, demand, used[node.name], caps)
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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_indexed_repair_matches_the_plain_scan(case: tuple[ClusterSpec, PlanPolicy]) -> None:
    spec, policy = case
    problem = build_problem(parse_snapshot(generate_snapshot(spec)), policy)
    if not problem.demands:
        return
    answer = GeometryModel(problem).solve(5.0)
    if answer is None:
        return
    decisions = Decisions()
    free = _index(problem, answer, decisions)
    _place(problem, answer, free, decisions)
    plain = copy.deepcopy(decisions)
    repair_module.repair(problem, decisions)
    _plain_scan(problem, plain)
    assert decisions.placements == plain.placements
    assert decisions.targets == plain.targets
