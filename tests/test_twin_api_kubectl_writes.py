"""The real kubectl writing to the twin's API facade: drain (evictions and budgets), create, apply, explain, events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from simulations.twin.api import TwinApiServer, write_kubeconfig
from tests.twin_api_fixtures import ONE_G, kubectl_run, small_twin

DRAIN = ("drain", "node-a", "--ignore-daemonsets", "--delete-emptydir-data")


@pytest.fixture
def facade(tmp_path: Path) -> Iterator[tuple[TwinApiServer, Path]]:
    with TwinApiServer(small_twin(), speed=0) as server:
        yield server, write_kubeconfig(tmp_path / "kubeconfig", server.url)


def ok(config: Path, *args: str) -> str:
    done = kubectl_run(config, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def manifest(folder: Path, name: str, obj: dict[str, object]) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(obj), encoding="utf-8")
    return str(path)


def pod(
    name: str, image: str = "nginx:1", labels: dict[str, str] | None = None, **container: object
) -> dict[str, object]:  # fmt: skip
    main = {"name": "main", "image": image, "resources": {"limits": {ONE_G: "1"}}} | container
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {"app": name}},
            "spec": {"containers": [main]}}  # fmt: skip


BUDGET = {
    "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "train", "namespace": "team-a"},
    "spec": {"minAvailable": 1, "selector": {"matchLabels": {"migopt.io/twin-app": "train"}}},
}  # fmt: skip


# ---- drain ------------------------------------------------------------------------------------------------


def test_drain_evicts_through_the_eviction_api(facade: tuple[TwinApiServer, Path]) -> None:
    server, config = facade
    out = ok(config, *DRAIN, "--timeout=30s")
    assert "pod/train-0 evicted" in out and "node/node-a drained" in out
    assert server.requests[("create", "pods/eviction")] == 1 and server.requests[("delete", "pods")] == 0
    assert [(e.pod, str(e.outcome)) for e in server.twin.evictions] == [("team-a/train-0", "evicted")]
    assert server.twin.node("node-a").unschedulable


def test_drain_is_blocked_by_a_disruption_budget_until_its_timeout(
    facade: tuple[TwinApiServer, Path], tmp_path: Path
) -> None:  # fmt: skip
    server, config = facade
    ok(config, "apply", "-f", manifest(tmp_path, "pdb", BUDGET))
    budget = ok(config, "get", "pdb", "-n", "team-a").splitlines()
    assert budget[0].split() == ["NAME", "MIN", "AVAILABLE", "MAX", "UNAVAILABLE", "ALLOWED", "DISRUPTIONS", "AGE"]
    assert budget[1].split()[:4] == ["train", "1", "N/A", "0"]
    done = kubectl_run(config, *DRAIN, "--timeout=1s")
    assert done.returncode != 0
    assert "Cannot evict pod as it would violate the pod's disruption budget." in done.stderr
    assert "global timeout reached" in done.stderr
    assert server.requests[("delete", "pods")] == 0 and server.requests[("create", "pods/eviction")] >= 1
    assert {str(e.outcome) for e in server.twin.evictions} == {"blocked"}
    train = server.twin.pod("team-a/train-0")
    assert train.node == "node-a" and not train.terminating


# ---- create, apply, explain -------------------------------------------------------------------------------


def test_create_validates_on_the_server_and_explain_reads_the_schema(
    facade: tuple[TwinApiServer, Path], tmp_path: Path
) -> None:  # fmt: skip
    server, config = facade
    assert ok(config, "create", "-f", manifest(tmp_path, "a", pod("web"))).strip() == "pod/web created"
    typo = manifest(tmp_path, "typo", pod("typo", imagePullPolicyy="Always"))
    refused = kubectl_run(config, "create", "-f", typo)
    assert refused.returncode != 0
    assert 'strict decoding error: unknown field "spec.containers[0].imagePullPolicyy"' in refused.stderr
    assert "typo" not in ok(config, "get", "pods", "-o", "name")
    warned = kubectl_run(config, "create", "-f", typo, "--validate=warn")
    assert warned.returncode == 0 and 'Warning: unknown field "spec.containers[0].imagePullPolicyy"' in warned.stderr
    explained = ok(config, "explain", "pod.spec")
    assert explained.startswith("KIND:       Pod\nVERSION:    v1") and "FIELD: spec <PodSpec>" in explained
    assert "\n  containers\t<[]Container> -required-" in explained
    assert "<IntOrString>" in ok(config, "explain", "pdb.spec.minAvailable")
    assert "HOLDER" not in ok(config, "explain", "lease.spec.holderIdentity")  # it explains, it does not list
    assert {"default/web", "default/typo"} <= set(server.twin.pods)


def test_apply_round_trips_its_last_applied_configuration(
    facade: tuple[TwinApiServer, Path], tmp_path: Path
) -> None:  # fmt: skip
    server, config = facade
    path = manifest(tmp_path, "web", pod("web"))
    assert ok(config, "apply", "-f", path).strip() == "pod/web created"
    live = json.loads(ok(config, "get", "pod", "web", "-o", "json"))
    applied = json.loads(live["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"])
    assert applied["spec"]["containers"][0]["image"] == "nginx:1" and applied["metadata"]["labels"] == {"app": "web"}
    path = manifest(tmp_path, "web", pod("web", image="nginx:2", labels={"app": "web", "tier": "gpu"}))
    assert ok(config, "apply", "-f", path).strip() == "pod/web configured"
    live = json.loads(ok(config, "get", "pod", "web", "-o", "json"))
    assert live["metadata"]["labels"] == {"app": "web", "tier": "gpu"}
    container = live["spec"]["containers"][0]  # a strategic merge by container name: the rest stays
    assert container["image"] == "nginx:2" and container["resources"]["limits"] == {ONE_G: "1"}
    assert ok(config, "apply", "-f", path).strip() == "pod/web unchanged"
    relabelled = manifest(tmp_path, "web", pod("web", image="nginx:2", labels={"app": "web", "tier": "cpu"}))
    diff = kubectl_run(config, "diff", "-f", relabelled)  # a server-side dry run of the patch: shown, not written
    assert diff.returncode == 1 and "-    tier: gpu\n+    tier: cpu" in diff.stdout, diff.stderr
    assert "tier: gpu" in ok(config, "get", "pod", "web", "-o", "yaml")
    resized = manifest(tmp_path, "web", pod("web", image="nginx:2", resources={"limits": {ONE_G: "2"}}))
    refused = kubectl_run(config, "apply", "-f", resized)
    assert refused.returncode != 0 and "Forbidden: pod updates may not change fields other than" in refused.stderr
    assert server.twin.pod("default/web").spec.requests == {ONE_G: 1}
    dry = manifest(tmp_path, "dry", pod("dry"))
    assert "(server dry run)" in ok(config, "apply", "--dry-run=server", "-f", dry)
    assert "default/dry" not in server.twin.pods


def test_apply_of_a_configmap_merges_and_removes_keys(facade: tuple[TwinApiServer, Path], tmp_path: Path) -> None:
    _, config = facade
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"a": "1", "b": "2"}}
    ok(config, "apply", "-f", manifest(tmp_path, "cm", cm))
    ok(config, "apply", "-f", manifest(tmp_path, "cm", cm | {"data": {"a": "1", "c": "3"}}))
    assert json.loads(ok(config, "get", "cm", "settings", "-o", "jsonpath={.data}")) == {"a": "1", "c": "3"}
    listed = ok(config, "get", "cm", "settings").splitlines()
    assert listed[0].split() == ["NAME", "DATA", "AGE"] and listed[1].split()[:2] == ["settings", "2"]


# ---- what kubectl get and describe show ---------------------------------------------------------------------


def test_events_leases_and_ages_print_as_on_a_real_cluster(
    facade: tuple[TwinApiServer, Path], tmp_path: Path
) -> None:  # fmt: skip
    server, config = facade
    ok(config, "create", "-f", manifest(tmp_path, "web", pod("web")))  # node-b has only 3g slices: pending
    server.advance(7200)  # two simulated hours in no wall time: nothing may land in the future
    events = ok(config, "get", "events").splitlines()
    assert events[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    row = events[1].split()
    assert row[1:4] == ["Warning", "FailedScheduling", "pod/web"] and row[0].endswith("s")
    assert "0/2 nodes are available: 2 Insufficient nvidia.com/mig-1g.5gb." in events[1]
    fields = "reason=FailedScheduling,involvedObject.kind=Pod,type=Warning"
    selected = ok(config, "get", "events", "--field-selector", fields)
    assert len(selected.splitlines()) == 2
    assert "No resources found" in kubectl_run(config, "get", "events", "--field-selector", "reason=Scheduled").stderr
    refused = kubectl_run(config, "get", "pods", "--field-selector", "reason=FailedScheduling")
    assert refused.returncode != 0 and "field label not supported: reason" in refused.stderr
    pods = ok(config, "get", "pods", "-A").splitlines()
    assert all(not line.endswith("<invalid>") for line in pods)
    described = ok(config, "describe", "pod", "web")
    assert "<invalid>" not in described and "Warning  FailedScheduling" in described
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "migopt-leader"},
             "spec": {"holderIdentity": "controller-0", "leaseDurationSeconds": 15}}  # fmt: skip
    ok(config, "apply", "-f", manifest(tmp_path, "lease", lease))
    leases = ok(config, "get", "lease").splitlines()
    assert leases[0].split() == ["NAME", "HOLDER", "AGE"] and leases[1].split()[:2] == ["migopt-leader", "controller-0"]
