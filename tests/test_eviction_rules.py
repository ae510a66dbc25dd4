"""Eviction eligibility: the ordered rules, the typed reason they give, and where that reason shows up (the
adapter's and the twin facade's snapshots, the unplaced reason, the `migopt_protected_pods` gauge)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer.controller.eviction import (
    ALLOWED,
    EVICTION_RULES,
    MIRROR_ANNOTATION,
    NOT_EVICTABLE_ANNOTATION,
    EvictionCandidate,
    EvictionVerdict,
    budget_exhausted,
    daemonset_owned,
    eviction_verdict,
    opted_out,
    static_pod,
)
from optimizer.kube.objects import running_pod
from optimizer.metrics.exporter import MetricsObserver
from simulations.twin import Twin
from simulations.twin.api import TwinApiServer
from solver.demand import demands, weights_for
from solver.errors import MigoptError
from solver.explain import Explainer
from solver.plan import PlanPolicy
from solver.planner import make_plan
from solver.protection import Protection
from solver.snapshot import ClusterSnapshot, RunningPod, parse_snapshot
from tests.twin_api_fixtures import THREE_G, small_twin
from tests.twin_fixtures import CONFIG, T


def candidate(**fields: Any) -> EvictionCandidate:
    return EvictionCandidate(name="team-a/p", **fields)


# ---- the rules ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "blocked", "allowed", "reason"),
    [
        (daemonset_owned, candidate(owner_kinds={"DaemonSet"}), candidate(owner_kinds={"ReplicaSet"}),
         Protection.DAEMONSET),
        (static_pod, candidate(annotations={MIRROR_ANNOTATION: "abc"}), candidate(annotations={"x": "y"}),
         Protection.MIRROR_POD),
        (opted_out, candidate(annotations={NOT_EVICTABLE_ANNOTATION: "False"}),
         candidate(annotations={NOT_EVICTABLE_ANNOTATION: "true"}), Protection.OPTED_OUT),
        (budget_exhausted, candidate(blocking_budget="team-a/keep"), candidate(), Protection.PDB),
    ],
)  # fmt: skip
def test_each_rule_blocks_with_its_reason_and_allows_the_rest(
    rule: Any, blocked: EvictionCandidate, allowed: EvictionCandidate, reason: Protection
) -> None:
    verdict = rule(blocked)
    assert not verdict.allowed and verdict.protection is reason
    assert verdict.detail and "\n" not in verdict.detail
    assert rule(allowed) == ALLOWED and rule(allowed).allowed
    assert eviction_verdict(blocked) == verdict and eviction_verdict(allowed) == ALLOWED


def test_the_budget_detail_names_the_budget() -> None:
    assert "team-a/keep" in eviction_verdict(candidate(blocking_budget="team-a/keep")).detail


def test_the_first_blocking_rule_wins() -> None:
    everything = candidate(
        owner_kinds={"DaemonSet"},
        annotations={MIRROR_ANNOTATION: "x", NOT_EVICTABLE_ANNOTATION: "false"},
        blocking_budget="team-a/keep",
    )
    assert [r.__name__ for r in EVICTION_RULES] == ["daemonset_owned", "static_pod", "opted_out", "budget_exhausted"]
    assert eviction_verdict(everything).protection is Protection.DAEMONSET
    assert eviction_verdict(everything, EVICTION_RULES[::-1]).protection is Protection.PDB
    no_owner = everything.model_copy(update={"owner_kinds": frozenset()})
    assert eviction_verdict(no_owner).protection is Protection.MIRROR_POD


def test_a_rule_is_one_function_and_one_list_entry() -> None:
    def gpu_burner(pod: EvictionCandidate) -> EvictionVerdict:
        if pod.name.endswith("burner"):
            return EvictionVerdict(protection=Protection.OPTED_OUT, detail="burns in")
        return ALLOWED

    rules = [*EVICTION_RULES, gpu_burner]
    assert eviction_verdict(EvictionCandidate(name="ns/burner"), rules).detail == "burns in"
    assert eviction_verdict(EvictionCandidate(name="ns/other"), rules).allowed


# ---- the snapshot's RunningPod keeps the reason, and stays compatible ------------------------------------------


def test_running_pod_flag_and_reason_agree() -> None:
    assert RunningPod(name="a").protection is None and RunningPod(name="a").evictable
    assert RunningPod(name="a", evictable=False).protection is Protection.UNSPECIFIED
    assert RunningPod(name="a", protection=Protection.PDB).evictable is False
    assert RunningPod(name="a", evictable=False, protection=Protection.PDB).protection is Protection.PDB


def test_snapshot_files_old_and_new_read_and_round_trip() -> None:
    old = parse_snapshot({"running": [{"name": "a", "evictable": False}, {"name": "b", "priority": 3}]})
    assert [(p.evictable, p.protection) for p in old.running] == [(False, Protection.UNSPECIFIED), (True, None)]
    new = parse_snapshot({"running": [{"name": "a", "protection": "daemonset"}]})
    assert new.running[0].evictable is False
    dumped = new.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    assert dumped["running"] == [{"name": "a", "evictable": False, "protection": "daemonset"}]
    assert parse_snapshot(dumped) == new
    with pytest.raises(MigoptError, match=r"running\[a\]: evictable: true contradicts protection 'pdb'"):
        parse_snapshot({"running": [{"name": "a", "evictable": True, "protection": "pdb"}]})


# ---- the adapter and the twin facade apply the same rules ------------------------------------------------------


def pod_body(name: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = {"containers": [{"name": "c", "image": "x", "resources": {"limits": {THREE_G: "1"}}}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **(meta or {})}, "spec": spec}


def twin_protection(server: TwinApiServer, name: str) -> Protection | None:
    return server.twin.snapshot().running_by_name[name].protection


def test_an_opted_out_pod_created_through_the_facade_is_protected_in_the_twins_snapshot() -> None:
    """The facade used to check DaemonSet owners only; it now applies the adapter's rules."""
    server = TwinApiServer(small_twin(), speed=0)
    with server.lock:
        server.bridge.create_pod("default", pod_body("opted", {"annotations": {NOT_EVICTABLE_ANNOTATION: "false"}}))
        server.bridge.create_pod("default", pod_body("mirror", {"annotations": {MIRROR_ANNOTATION: "m"}}))
        server.bridge.create_pod("default", pod_body("plain"))
    snapshot = server.twin.snapshot()
    held = {p.name: p for p in snapshot.running}
    assert held["default/opted"].evictable is False and held["default/opted"].protection is Protection.OPTED_OUT
    assert held["default/mirror"].protection is Protection.MIRROR_POD
    assert held["default/plain"].evictable and held["default/plain"].protection is None


def test_annotating_a_running_pod_through_the_facade_changes_its_protection() -> None:
    server = TwinApiServer(small_twin(), speed=0)
    with server.lock:
        server.bridge.create_pod("default", pod_body("p"))
        stored = server.store.get("pods", "default", "p")
        assert stored is not None
        annotated = {**stored.obj["metadata"], "annotations": {NOT_EVICTABLE_ANNOTATION: "false"}}
        opted = {**stored.obj, "metadata": annotated}
        server.bridge.write_pod("default", "p", opted)
        assert twin_protection(server, "default/p") is Protection.OPTED_OUT
        server.bridge.write_pod("default", "p", stored.obj)
        assert twin_protection(server, "default/p") is None


def test_a_reason_loaded_from_a_snapshot_reaches_the_twins_snapshot_and_survives_a_relabel() -> None:
    nodes = [{"name": "n", "gpus": [{"index": 0, "model": "A100-40GB", "instances": [
        {"profile": "7g.40gb", "start": 0, "pod": "ns/keep"}]}]}]  # fmt: skip
    data = {"nodes": nodes, "running": [{"name": "ns/keep", "protection": "pdb"}]}
    server = TwinApiServer(Twin.from_snapshot(parse_snapshot(data), CONFIG, timings=T), speed=0)
    assert twin_protection(server, "ns/keep") is Protection.PDB
    with server.lock:
        stored = server.store.get("pods", "ns", "keep")
        assert stored is not None
        relabelled = {**stored.obj, "metadata": {**stored.obj["metadata"], "labels": {"team": "x"}}}
        server.bridge.write_pod("ns", "keep", relabelled)  # the rules say nothing new: the reason stays
    assert twin_protection(server, "ns/keep") is Protection.PDB


_OWNER_KINDS = st.lists(st.sampled_from(["DaemonSet", "ReplicaSet", "Job", "StatefulSet", "Node"]), max_size=2)
_ANNOTATIONS = st.dictionaries(
    st.sampled_from([MIRROR_ANNOTATION, NOT_EVICTABLE_ANNOTATION, "example.com/other"]),
    st.sampled_from(["false", "False", "FALSE", "true", "", "no", "x"]),
    max_size=3,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kinds=_OWNER_KINDS, annotations=_ANNOTATIONS)
def test_the_adapter_and_the_facade_agree_on_the_same_pod(kinds: list[str], annotations: dict[str, str]) -> None:
    owners = [{"apiVersion": "v1", "kind": k, "name": f"o{i}", "uid": f"u{i}"} for i, k in enumerate(kinds)]
    meta: dict[str, Any] = {"annotations": annotations, "ownerReferences": owners}
    server = TwinApiServer(small_twin(), speed=0)
    with server.lock:
        stored = server.bridge.create_pod("default", pod_body("p", meta))
    adapter = running_pod(stored.obj)  # what the Kubernetes adapter makes of the object the facade serves
    assert twin_protection(server, "default/p") == adapter.protection
    expected = eviction_verdict(
        EvictionCandidate(name="default/p", owner_kinds=frozenset(kinds), annotations=annotations)
    )
    assert adapter.protection == expected.protection


# ---- the reason reaches the unplaced reason and the metrics ----------------------------------------------------


def _held_cluster(running: list[dict[str, Any]]) -> ClusterSnapshot:
    """Three A100-40GB GPUs, each one 7g.40gb held by `ns/p<i>`; one pending pod that needs a whole GPU."""
    gpus = [
        {"index": i, "model": "A100-40GB", "instances": [{"profile": "7g.40gb", "start": 0, "pod": f"ns/p{i}"}]}
        for i in range(3)
    ]
    pending = [{"name": "ns/big", "requests": {"nvidia.com/mig-7g.40gb": 1}, "priority": 10}]
    return parse_snapshot({"nodes": [{"name": "n", "gpus": gpus}], "pods": pending, "running": running})


def test_the_unplaced_reason_names_the_protections() -> None:
    snapshot = _held_cluster(
        [{"name": "ns/p0", "protection": "pdb"}, {"name": "ns/p1", "protection": "pdb"},
         {"name": "ns/p2", "protection": "daemonset"}]
    )  # fmt: skip
    demand = demands(snapshot, weights_for(snapshot))[0]
    reason = Explainer(snapshot, PlanPolicy(), 0, 0).reason(demand)
    assert reason.endswith("or protected pods (3 GPUs: pdb 2, daemonset 1)")
    plan = make_plan(snapshot, name="greedy")
    assert plan.unplaced[0].reason == reason


def test_the_unplaced_reason_counts_the_priority_floor_and_keeps_its_old_words_without_protection() -> None:
    snapshot = _held_cluster(
        [{"name": "ns/p0", "priority": 100}, {"name": "ns/p1", "evictable": False}, {"name": "ns/p2", "priority": 20}]
    )
    demand = demands(snapshot, weights_for(snapshot))[0]
    reason = Explainer(snapshot, PlanPolicy(protect_priority=50), 0, 0).reason(demand)
    assert reason.endswith("priority (1 GPUs) or protected pods (2 GPUs: unspecified 1, protect-priority 1)")
    unprotected = _held_cluster([{"name": f"ns/p{i}", "priority": 20} for i in range(3)])
    demand = demands(unprotected, weights_for(unprotected))[0]
    assert Explainer(unprotected, PlanPolicy(), 0, 0).reason(demand).endswith("or protected pods (0 GPUs)")


def test_the_protected_pods_gauge_counts_by_reason() -> None:
    snapshot = _held_cluster(
        [{"name": "ns/p0", "protection": "pdb"}, {"name": "ns/p1", "protection": "pdb"},
         {"name": "ns/p2", "evictable": False}, {"name": "ns/free"}]
    )  # fmt: skip
    observer = MetricsObserver()
    observer.snapshot_taken(snapshot, 0.0, {})

    def value(reason: str) -> float | None:
        return observer.registry.get_sample_value("migopt_protected_pods", {"reason": reason})

    assert value("pdb") == 2 and value("unspecified") == 1 and value("daemonset") == 0
    assert all(value(p.value) is not None for p in Protection)
    promtool = shutil.which("promtool")
    if promtool is not None:
        check = subprocess.run(
            [promtool, "check", "metrics"], input=observer.exposition(), capture_output=True, timeout=30, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr
