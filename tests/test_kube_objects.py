"""Kubernetes objects → planner pods: pending vs holding, requests, constraints, who may be evicted."""

from __future__ import annotations

from typing import Any

import pytest

from optimizer.kube.objects import (
    holds_devices,
    is_unschedulable,
    pending_pod,
    pod_requests,
    pods_without_disruption_budget,
    running_pod,
    selector_matches,
)
from solver.errors import MigoptError
from solver.protection import Protection

UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}


def pod(
    name: str = "train",
    namespace: str = "team-a",
    *,
    limits: dict[str, str] | None = None,
    node: str | None = None,
    phase: str = "Pending",
    conditions: list[dict[str, str]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    meta = spec.pop("metadata", {})
    return {
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": {
            "containers": [{"name": "main", "resources": {"limits": limits or {"nvidia.com/mig-1g.5gb": "1"}}}],
            **({"nodeName": node} if node else {}),
            **spec,
        },
        "status": {"phase": phase, "conditions": conditions if conditions is not None else [UNSCHEDULABLE]},
    }


def test_requests_sum_containers_and_take_the_largest_init_container() -> None:
    p = pod(limits={"nvidia.com/mig-1g.5gb": "1", "cpu": "500m"})
    p["spec"]["containers"].append({"name": "b", "resources": {"requests": {"nvidia.com/mig-1g.5gb": "2"}}})
    p["spec"]["initContainers"] = [{"name": "i", "resources": {"limits": {"nvidia.com/mig-3g.20gb": "1"}}}]
    assert pod_requests(p) == {"nvidia.com/mig-1g.5gb": 3, "nvidia.com/mig-3g.20gb": 1}


def test_only_scheduler_rejected_unbound_pods_are_pending() -> None:
    assert is_unschedulable(pod())
    assert not is_unschedulable(pod(conditions=[]))  # the scheduler has not tried yet
    assert not is_unschedulable(pod(node="n1"))
    assert not is_unschedulable(pod(metadata={"deletionTimestamp": "2026-01-01T00:00:00Z"}))
    assert holds_devices(pod(node="n1", phase="Running"))
    assert not holds_devices(pod(node="n1", phase="Succeeded"))


def test_pending_pod_carries_priority_selectors_affinity_and_tolerations() -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
            }
        }
    }
    p = pod(
        priority=100,
        nodeSelector={"pool": "gpu"},
        affinity=affinity,
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    result = pending_pod(p)
    assert result.name == "team-a/train"
    assert result.priority == 100
    assert result.node_selector == {"pool": "gpu"}
    assert result.node_affinity[0].match_expressions[0].values == ["a"]
    assert result.tolerations[0].operator == "Exists"


def test_an_unknown_profile_is_a_one_line_error_naming_the_pod() -> None:
    with pytest.raises(MigoptError, match=r"team-a/bad.*mig-9g\.1gb|team-a/bad.*9g\.1gb"):
        pending_pod(pod("bad", limits={"nvidia.com/mig-9g.1gb": "1"}))


def test_daemonset_mirror_and_opted_out_pods_are_never_evictable() -> None:
    ds = pod(node="n1", metadata={"ownerReferences": [{"kind": "DaemonSet", "name": "x"}]})
    mirror = pod(node="n1", metadata={"annotations": {"kubernetes.io/config.mirror": "abc"}})
    opted = pod(node="n1", metadata={"annotations": {"migopt.io/evictable": "false"}})
    plain = pod(node="n1", metadata={"ownerReferences": [{"kind": "ReplicaSet", "name": "x"}]}, priority=5)
    assert [running_pod(p).evictable for p in (ds, mirror, opted, plain)] == [False, False, False, True]
    assert [running_pod(p).protection for p in (ds, mirror, opted, plain)] == [
        Protection.DAEMONSET, Protection.MIRROR_POD, Protection.OPTED_OUT, None,
    ]  # fmt: skip
    assert running_pod(plain).priority == 5


def test_pods_under_a_budget_that_allows_no_disruption_are_not_evictable() -> None:
    a = pod("a", metadata={"labels": {"app": "x"}}, node="n1")
    b = pod("b", metadata={"labels": {"app": "y"}}, node="n1")
    other_ns = pod("c", namespace="team-b", metadata={"labels": {"app": "x"}}, node="n1")
    pdb = {
        "metadata": {"name": "x", "namespace": "team-a"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}},
        "status": {"disruptionsAllowed": 0},
    }
    no_selector = {"metadata": {"name": "n", "namespace": "team-a"}, "spec": {}, "status": {"disruptionsAllowed": 0}}
    assert pods_without_disruption_budget([pdb, no_selector], [a, b, other_ns]) == {"team-a/a": "team-a/x"}
    pdb["status"]["disruptionsAllowed"] = 1
    assert pods_without_disruption_budget([pdb], [a, b]) == {}
    held = running_pod(a, {"team-a/a": "team-a/x"})
    assert held.evictable is False and held.protection is Protection.PDB


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {}, True),
    ],
)
def test_label_selectors(selector: dict[str, Any], labels: dict[str, str], expected: bool) -> None:
    assert selector_matches(selector, labels) is expected
