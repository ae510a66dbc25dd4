"""The Kustomize manifests in `deploy/`: they render, every core object passes the Kubernetes schemas and carries
the recommended labels, the containers are locked down (with the agent's documented exceptions), the network
policies and the priority class are what the pods need, the modes and probes match the code, and the RBAC grants
exactly the requests the code makes, measured on a real run against the twin's API facade.

Needs `kubectl` (for `kubectl kustomize`); fails where it is not installed.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import shutil
import subprocess
import textwrap
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from kubefacade.handler import ApiHandler, _verb
from kubefacade.routes import parse_target
from migopt.settings import RunSettings, load_settings
from optimizer.agent.node_agent import NodeAgent, kubernetes_writer
from optimizer.controller.actuator import ActuationSettings
from optimizer.controller.reconcile import ControllerSettings
from optimizer.kube.adapter import KubeClusterPort
from optimizer.kube.api import ApiCaller
from optimizer.kube.informer import Informer, object_key
from optimizer.kube.leader import LeaderElector
from optimizer.kube.objects import pod_requests
from simulations.twin.api import TwinApiServer, write_kubeconfig
from tests.controller_fixtures import mig_controller
from tests.fake_nvml import FakeGpu, FakeInstance, FakeNvml
from tests.twin_api_fixtures import small_twin

Obj = dict[str, Any]
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
VARIANTS = {
    "default": DEPLOY,
    "enforce": DEPLOY / "overlays" / "enforce",
    "openshift": DEPLOY / "overlays" / "openshift",
    "agent-root": DEPLOY / "overlays" / "agent-root",
    "kube-prometheus-stack": DEPLOY / "overlays" / "kube-prometheus-stack",
}
K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests target (ValidatingAdmissionPolicy-era clusters)
# CRD / OpenShift kinds: no schema in the validator
NOT_CORE = {"ServiceMonitor", "PrometheusRule", "SecurityContextConstraints"}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",  # base/agent-admission.yaml
    "ValidatingAdmissionPolicyBinding",
    "PriorityClass",  # base/controller-priority.yaml
}
VERSION = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
IMAGES = {"controller": f"ghcr.io/migopt/migopt:{VERSION}", "agent": f"ghcr.io/migopt/migopt-agent:{VERSION}"}
COMPONENTS = {"controller", "agent", "monitoring", "namespace"}
CONTROLLER_SA = ("migopt-system", "migopt-controller")
AGENT_SA = ("migopt-system", "migopt-agent")


@pytest.fixture(autouse=True)
def _kubectl_installed() -> None:
    """A real client nobody here wrote is the point of these tests: without it they fail rather than skip."""
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is not installed (the README's test setup needs it)")


@functools.cache
def render(variant: str) -> tuple[Obj, ...]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(VARIANTS[variant])], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def one(objs: tuple[Obj, ...], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def settings_of(objs: tuple[Obj, ...], tmp_path: Path) -> RunSettings:
    """The controller's settings as `migopt run --config` would load them from the rendered ConfigMap."""
    cms = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("migopt-settings")]
    assert len(cms) == 1
    path = tmp_path / "settings.yaml"
    path.write_text(cms[0]["data"]["settings.yaml"], encoding="utf-8")
    return load_settings(path)


def pod_spec(objs: tuple[Obj, ...], kind: str, name: str) -> Obj:
    spec: Obj = one(objs, kind, name)["spec"]["template"]["spec"]
    return spec


# ---- 1. render and validate --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_renders_and_core_objects_pass_the_kubernetes_schemas(variant: str) -> None:
    objs = render(variant)
    kinds = Counter(o["kind"] for o in objs)
    assert kinds["Deployment"] == kinds["DaemonSet"] == kinds["Namespace"] == kinds["ServiceMonitor"] == 1
    for obj in objs:
        where = f"{variant}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in NOT_CORE:
            assert obj["apiVersion"] in ("monitoring.coreos.com/v1", "security.openshift.io/v1"), where
            assert obj["metadata"]["name"].startswith("migopt"), where
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{where}: {err.message} at {list(err.path)}")
        namespaced = obj["kind"] not in CLUSTER_SCOPED
        assert ("namespace" in obj["metadata"]) == namespaced, where
        if namespaced:  # only the ConfigMap Role leaves migopt's namespace
            expected = "gpu-operator" if obj["metadata"]["name"] == "migopt-mig-config" else "migopt-system"
            assert obj["metadata"]["namespace"] == expected, where


def test_service_monitor_and_dashboard_point_at_the_metrics() -> None:
    objs = render("default")
    monitor = one(objs, "ServiceMonitor", "migopt-controller")
    service = one(objs, "Service", "migopt-controller")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["migopt-system"]}
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("metrics", "/metrics")]
    dashboard = one(objs, "ConfigMap", "migopt-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert list(dashboard["data"]) == ["migopt.json"]
    assert dashboard["data"]["migopt.json"] == (DEPLOY / "grafana" / "migopt.json").read_text(encoding="utf-8")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_object_and_pod_carries_the_recommended_labels(variant: str) -> None:
    """app.kubernetes.io/{name,component,part-of,version} everywhere, the version being the package's (and the
    image tags', checked below); the selectors stay the two labels they were, so an upgrade never changes them."""
    objs = render(variant)
    for obj in objs:
        where = f"{variant}: {obj['kind']}/{obj['metadata']['name']}"
        labels = obj["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/name") == "migopt", where
        assert labels.get("app.kubernetes.io/part-of") == "migopt", where
        assert labels.get("app.kubernetes.io/version") == VERSION, where
        assert labels.get("app.kubernetes.io/component") in COMPONENTS, where
    for kind, name, component in (
        ("Deployment", "migopt-controller", "controller"),
        ("DaemonSet", "migopt-agent", "agent"),
    ):
        workload = one(objs, kind, name)
        selector = {"app.kubernetes.io/name": "migopt", "app.kubernetes.io/component": component}
        assert workload["spec"]["selector"] == {"matchLabels": selector}
        template = workload["spec"]["template"]["metadata"]["labels"]
        assert template == {**selector, "app.kubernetes.io/part-of": "migopt", "app.kubernetes.io/version": VERSION}


def test_the_release_label_is_set_once_and_only_on_what_prometheus_selects() -> None:
    """kube-prometheus-stack's Prometheus selects ServiceMonitors and PrometheusRules by `release: <its Helm release>`;
    the overlay sets it on exactly those (components/prometheus-release), the default install on nothing."""
    objs = render("kube-prometheus-stack")
    labelled = sorted(o["kind"] for o in objs if "release" in (o["metadata"].get("labels") or {}))
    assert labelled == ["PrometheusRule", "ServiceMonitor"]
    assert {o["metadata"]["labels"]["release"] for o in objs if o["kind"] in labelled} == {"kube-prometheus-stack"}
    assert not any("release" in (o["metadata"].get("labels") or {}) for o in render("default"))
    assert [o["kind"] for o in render("default") if o["kind"] == "PrometheusRule"] == []  # alerts are opt-in


def _policy_for(objs: tuple[Obj, ...], pod_labels: dict[str, str]) -> Obj:
    policies = [
        o for o in objs
        if o["kind"] == "NetworkPolicy" and o["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    ]  # fmt: skip
    assert len(policies) == 1, [p["metadata"]["name"] for p in policies]
    return policies[0]


def _egress_ports(policy: Obj) -> set[tuple[int | str, str]]:
    rules = policy["spec"].get("egress") or []
    assert all(rule.get("ports") for rule in rules), "an egress rule without ports allows every port"
    return {(p["port"], p["protocol"]) for rule in rules for p in rule["ports"]}


API_SERVER_PORTS = {(443, "TCP"), (6443, "TCP")}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_network_policies_allow_each_pod_only_what_it_uses(variant: str) -> None:
    objs = render(variant)
    controller_pod = one(objs, "Deployment", "migopt-controller")["spec"]["template"]
    controller = _policy_for(objs, controller_pod["metadata"]["labels"])
    assert sorted(controller["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    # In: the metrics port only (Prometheus; the kubelet's probes use it too).
    (ingress,) = controller["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert [p["name"] for p in controller_pod["spec"]["containers"][0]["ports"]] == ["metrics"]
    # Out: the API server, Prometheus (and OpenShift monitoring's Thanos querier on the overlay that reads it) and
    # DNS (for the Prometheus URL's host name), nothing else.
    prometheus = {(9090, "TCP")} | ({(9091, "TCP")} if variant == "openshift" else set())
    assert _egress_ports(controller) == API_SERVER_PORTS | prometheus | {(53, "UDP"), (53, "TCP")}
    dns = next(
        r for r in controller["spec"]["egress"] if (53, "UDP") in {(p["port"], p["protocol"]) for p in r["ports"]}
    )
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    agent_pod = one(objs, "DaemonSet", "migopt-agent")["spec"]["template"]
    agent = _policy_for(objs, agent_pod["metadata"]["labels"])
    assert sorted(agent["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert not agent["spec"].get("ingress")  # it serves nothing
    assert _egress_ports(agent) == API_SERVER_PORTS  # one patch of its node per report
    for policy in (controller, agent):
        for rule in policy["spec"]["egress"]:
            for peer in rule.get("to", []):
                if "ipBlock" in peer:
                    ipaddress.ip_network(peer["ipBlock"]["cidr"])  # a valid CIDR (the schema only says string)


def test_the_controller_runs_at_its_own_priority() -> None:
    objs = render("default")
    pod = pod_spec(objs, "Deployment", "migopt-controller")
    priority = one(objs, "PriorityClass", pod["priorityClassName"])
    # Above the workloads it serves, below the system classes (2,000,000,000) and their reserved range.
    assert 1_000_000 < priority["value"] <= 1_000_000_000 and priority["globalDefault"] is False
    assert pod_spec(objs, "DaemonSet", "migopt-agent")["priorityClassName"] == "system-node-critical"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_api_token_is_mounted_explicitly_where_the_client_reads_it(variant: str) -> None:
    """No automatic token mount (checkov CKV_K8S_38); the same pod-bound, kubelet-rotated token, CA and namespace
    projected at the path the Kubernetes client's in-cluster configuration reads."""
    objs = render(variant)
    for kind, name, account in (
        ("Deployment", "migopt-controller", CONTROLLER_SA),
        ("DaemonSet", "migopt-agent", AGENT_SA),
    ):
        pod = pod_spec(objs, kind, name)
        assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == account[1]
        (container,) = pod["containers"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "api-token")
        assert mount == {
            "name": "api-token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True
        }  # fmt: skip
        volume = next(v for v in pod["volumes"] if v["name"] == "api-token")
        sources = volume["projected"]["sources"]
        token = next(s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s)
        assert token["path"] == "token" and 600 <= token["expirationSeconds"] <= 86400 and "audience" not in token
        ca = next(s["configMap"] for s in sources if "configMap" in s)
        assert ca == {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
        namespace = next(s["downwardAPI"] for s in sources if "downwardAPI" in s)
        assert namespace["items"] == [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]


# ---- 2. security settings ----------------------------------------------------------------------------------


def effective(pod: Obj, container: Obj, key: str) -> Any:
    """A container's security setting, falling back to the pod's (as the kubelet resolves it)."""
    own = container.get("securityContext") or {}
    return own[key] if key in own else (pod.get("securityContext") or {}).get(key)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_container_is_locked_down_with_only_the_agents_documented_exceptions(variant: str) -> None:
    objs = render(variant)
    for kind, name in (("Deployment", "migopt-controller"), ("DaemonSet", "migopt-agent")):
        pod = pod_spec(objs, kind, name)
        agent = kind == "DaemonSet"
        assert not pod.get("initContainers") and not pod.get("hostNetwork") and not pod.get("hostIPC")
        assert pod.get("hostPID", False) is agent  # NVML lists only processes in the caller's PID namespace
        for container in pod["containers"]:
            ctx = container["securityContext"]
            assert container["image"] == IMAGES["agent" if agent else "controller"]
            assert ctx["readOnlyRootFilesystem"] is True and not ctx.get("privileged")
            assert effective(pod, container, "seccompProfile") == {"type": "RuntimeDefault"}
            assert ctx["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            tmp = next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"]["name"])
            assert "emptyDir" in tmp
            as_root = agent and variant == "agent-root"
            assert effective(pod, container, "runAsNonRoot") is not as_root
            if as_root:
                assert effective(pod, container, "runAsUser") == 0
            if not agent:
                assert ctx["allowPrivilegeEscalation"] is False and "add" not in ctx["capabilities"]
                assert all("hostPath" not in v for v in pod["volumes"])
                continue
            # The agent's exceptions (deploy/README.md): SYS_ADMIN in the bounding set, for the NVIDIA Container
            # Toolkit to inject the mig/monitor device; the API then requires privilege escalation to be allowed.
            assert ctx["capabilities"]["add"] == ["SYS_ADMIN"] and ctx["allowPrivilegeEscalation"] is True
            host = [v for v in pod["volumes"] if "hostPath" in v]
            assert [v["hostPath"]["path"] for v in host] == ["/var/lib/kubelet/pod-resources"]
            assert mounts["/var/lib/kubelet/pod-resources"]["readOnly"] is True
            assert not any(k.startswith("nvidia.com/") for k in container["resources"].get("limits", {}))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_agent_has_what_nvml_needs(variant: str) -> None:
    pod = pod_spec(render(variant), "DaemonSet", "migopt-agent")
    assert pod["runtimeClassName"] == "nvidia" and pod["priorityClassName"] == "system-node-critical"
    assert pod["nodeSelector"] == {"nvidia.com/mig.capable": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists"} in pod["tolerations"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    nvidia = {k: e["value"] for k, e in env.items() if k.startswith("NVIDIA_")}
    assert nvidia == {
        "NVIDIA_VISIBLE_DEVICES": "all",
        "NVIDIA_DRIVER_CAPABILITIES": "utility",
        "NVIDIA_MIG_MONITOR_DEVICES": "all",
    }
    assert container["args"][0] == "agent" and pod["serviceAccountName"] == "migopt-agent"


def test_controller_meets_the_restricted_pod_security_level() -> None:
    """The checks of Pod Security `restricted` that apply to this pod (the namespace is `privileged` for the
    agent's sake only)."""
    pod = pod_spec(render("default"), "Deployment", "migopt-controller")
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    allowed_volumes = {"configMap", "emptyDir", "projected", "secret", "downwardAPI"}
    assert all(set(v) - {"name"} <= allowed_volumes for v in pod["volumes"])
    for container in pod["containers"]:
        assert "hostPort" not in str(container.get("ports"))


def test_openshift_overlay_fixes_no_ids_and_ships_an_scc_for_the_agent_only() -> None:
    objs = render("openshift")
    for kind, name in (("Deployment", "migopt-controller"), ("DaemonSet", "migopt-agent")):
        pod = pod_spec(objs, kind, name)
        for ctx in [pod["securityContext"], *(c["securityContext"] for c in pod["containers"])]:
            assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(ctx), f"{kind}: {ctx}"
    scc = one(objs, "SecurityContextConstraints", "migopt-agent")
    assert scc["allowHostPID"] is True and scc["allowHostDirVolumePlugin"] is True
    assert scc["allowPrivilegedContainer"] is False and scc["allowedCapabilities"] == ["SYS_ADMIN"]
    assert not scc["allowHostNetwork"] and not scc["allowHostIPC"] and not scc["allowHostPorts"]
    assert scc["requiredDropCapabilities"] == ["ALL"] and scc["readOnlyRootFilesystem"] is True
    assert scc["runAsUser"]["type"] == "MustRunAsNonRoot" and scc["users"] == [] and scc["groups"] == []
    assert set(scc["volumes"]) == {"emptyDir", "hostPath", "projected"}
    # `use` of the SCC is an admission permission, not an API request the code makes; it is the only extra grant.
    extra = grants_for(objs, AGENT_SA) - grants_for(render("default"), AGENT_SA)
    assert extra == {
        Grant("security.openshift.io", "securitycontextconstraints", "use", "migopt-system", ("migopt-agent",))
    }
    assert grants_for(objs, CONTROLLER_SA) == grants_for(render("default"), CONTROLLER_SA)


# ---- 3. modes, replicas, probes ----------------------------------------------------------------------------


def test_default_recommends_and_the_enforce_overlay_only_changes_the_mode(tmp_path: Path) -> None:
    default = settings_of(render("default"), tmp_path)
    enforce = settings_of(render("enforce"), tmp_path)
    assert default.mode == "recommend" and enforce.mode == "enforce"
    assert default.model_dump(exclude={"mode"}) == enforce.model_dump(exclude={"mode"})
    for variant in ("openshift", "agent-root"):
        assert settings_of(render(variant), tmp_path).mode == "recommend"
    # The Deployment reads the ConfigMap the overlay generated (kustomize rewrote the hashed name).
    objs = render("enforce")
    volume = next(v for v in pod_spec(objs, "Deployment", "migopt-controller")["volumes"] if v["name"] == "settings")
    mounted = one(objs, "ConfigMap", volume["configMap"]["name"])["data"]["settings.yaml"]
    assert yaml.safe_load(mounted)["mode"] == "enforce"
    container = pod_spec(objs, "Deployment", "migopt-controller")["containers"][0]
    assert not any(e["name"] == "MIGOPT_MODE" for e in container["env"]) and "--mode" not in container["args"]


def test_controller_deployment_matches_what_the_code_serves(tmp_path: Path) -> None:
    objs = render("default")
    settings = settings_of(objs, tmp_path)
    deployment = one(objs, "Deployment", "migopt-controller")
    assert deployment["spec"]["replicas"] == 2 and settings.leader.enabled
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["run", "--config", "/etc/migopt/settings.yaml"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/migopt")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"].startswith("migopt-settings-")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": settings.metrics_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert pod["serviceAccountName"] == "migopt-controller"
    service = one(objs, "Service", "migopt-controller")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("metrics", settings.metrics_port, "metrics")
    ]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # Where the settings put the owned objects is where the RBAC scopes them.
    assert settings.kube.mig_config_namespace == one(objs, "Role", "migopt-mig-config")["metadata"]["namespace"]
    assert settings.leader.lease_namespace == one(objs, "Role", "migopt-leader-election")["metadata"]["namespace"]


# ---- 4. RBAC against the requests the code makes -----------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    group: str
    resource: str
    verb: str
    namespace: str | None  # None: every namespace, and cluster-scoped resources
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Request:
    verb: str
    group: str
    resource: str
    namespace: str  # "" for cluster-scoped resources and for lists across namespaces
    name: str
    field_selector: str

    def allowed_by(self, grant: Grant) -> bool:
        if (grant.group, grant.resource, grant.verb) != (self.group, self.resource, self.verb):
            return False
        if grant.namespace is not None and grant.namespace != self.namespace:
            return False
        if not grant.names:
            return True
        if self.verb in ("list", "watch"):  # RBAC checks resourceNames against a metadata.name field selector
            return self.field_selector.removeprefix("metadata.name=") in grant.names
        return self.name in grant.names


PLATFORM_ROLES = {("ClusterRole", "cluster-monitoring-view")}
"""OpenShift's read access to its monitoring stack, bound by the openshift overlay (monitoring.yaml)."""


def grants_for(objs: tuple[Obj, ...], account: tuple[str, str]) -> set[Grant]:
    """Every (group, resource, verb, scope, names) the bindings in `objs` give one ServiceAccount."""
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objs}
    grants: set[Grant] = set()
    for binding in objs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = {(s["kind"], s.get("namespace"), s["name"]) for s in binding.get("subjects") or []}
        if ("ServiceAccount", *account) not in subjects:
            continue
        scope = binding["metadata"].get("namespace")  # None for a ClusterRoleBinding
        ref = binding["roleRef"]
        role = roles.get((ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"]))
        if role is None:  # a role the platform ships: its grants are not in the manifests to compare
            assert (ref["kind"], ref["name"]) in PLATFORM_ROLES, f"binding to a role nobody ships: {ref}"
            continue
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        assert "*" not in (group, resource, verb), f"wildcard in {role['metadata']['name']}"
                        grants.add(Grant(group, resource, verb, scope, tuple(rule.get("resourceNames") or ())))
    return grants


SETUP_AGENT = "migopt-test-setup"
CONTROLLER_AGENT = "migopt-controller"


class RequestLog:
    """Every resource request the facade serves, with its namespace, name and field selector, by who made it: the
    test's setup client, the controller's client (each by its User-Agent), or else the node agent."""

    def __init__(self) -> None:
        self.by_client: dict[str, list[Request]] = {"setup": [], "controller": [], "agent": []}

    def hook(self, original: Callable[..., None]) -> Callable[..., None]:
        by_client = self.by_client

        def resource(handler: ApiHandler, method: str, path: str, query: dict[str, str], body: bytes) -> None:
            target = parse_target(path)
            if target is not None:
                res = target.resource
                request = Request(
                    _verb(method, target, query), res.group, res.name, target.namespace, target.name,
                    query.get("fieldSelector", ""),
                )  # fmt: skip
                agent = handler.headers.get("User-Agent") or ""
                who = "setup" if agent == SETUP_AGENT else "controller" if agent == CONTROLLER_AGENT else "agent"
                by_client[who].append(request)
            original(handler, method, path, query, body)

        return resource

    def counts(self, who: str) -> Counter[tuple[str, str]]:
        return Counter((r.verb, r.resource) for r in self.by_client[who])


def settle(server: TwinApiServer, informers: list[Informer], timeout_s: float = 10.0) -> None:
    """Wait until the watches have delivered the store's nodes and GPU pods (the reconcile reads caches)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with server.lock:
            want = {
                "nodes": {object_key(s.obj): s.rv for s in server.store.items("nodes")},
                "pods": {object_key(s.obj): s.rv for s in server.store.items("pods") if pod_requests(s.obj)},
            }
        have = {
            i.resource: {object_key(o): int(o["metadata"]["resourceVersion"]) for o in i.items()} for i in informers
        }
        if all(have[k] == v for k, v in want.items()):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"watches did not catch up: want {want}, have {have}")
        time.sleep(0.01)


def pending_pod(name: str, requests: dict[str, int], priority: int) -> Obj:
    limits = {k: str(v) for k, v in requests.items()}
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"priority": priority, "containers": [{"name": "c", "image": "x", "resources": {"limits": limits}}]},
    }  # fmt: skip


@pytest.fixture
def requests_log(monkeypatch: pytest.MonkeyPatch) -> RequestLog:
    log = RequestLog()
    monkeypatch.setattr(ApiHandler, "_resource", log.hook(ApiHandler._resource))
    return log


@pytest.fixture
def default_client_config() -> Iterator[None]:
    """The agent's writer loads a kubeconfig into the client's process-wide default; put the old one back."""
    saved = client.Configuration.get_default_copy()
    yield
    client.Configuration.set_default(saved)


def api_client(server: TwinApiServer, user_agent: str) -> client.ApiClient:
    api = client.ApiClient(client.Configuration(host=server.url))
    api.user_agent = user_agent
    return api


def run_controller(server: TwinApiServer, settings: RunSettings) -> list[str]:
    """The controller's parts, as `migopt run` wires them, through two reconfigurations (the first evicts a pod and
    creates the owned ConfigMap, the second updates it); returns the pods evicted."""
    v1 = client.CoreV1Api(api_client(server, SETUP_AGENT))
    # Setup: a team's namespace (the facade already has migopt's, as the install leaves it); no owned ConfigMap
    # yet, so the controller must create it; three high-priority pods that need whole GPUs (7g.40gb), so every
    # GPU is rebuilt and node-a's GPU 0 must first lose its low-priority pod team-a/train-0.
    existing = {n.metadata.name for n in v1.list_namespace().items}
    for namespace in {settings.leader.lease_namespace, "team-b"} - existing:
        v1.create_namespace({"metadata": {"name": namespace}})
    v1.delete_namespaced_config_map(settings.kube.mig_config_name, settings.kube.mig_config_namespace)
    big = [f"big-{i}" for i in range(3)]
    for name in big:
        v1.create_namespaced_pod("team-b", pending_pod(name, {"nvidia.com/mig-7g.40gb": 1}, priority=1000))
    api = api_client(server, CONTROLLER_AGENT)
    caller = ApiCaller(sleep=lambda _: None)
    port = KubeClusterPort(api, settings.kube, caller=caller, instance="migopt-controller-0")
    elector = LeaderElector(api, settings.leader, "migopt-controller-0", caller)
    controller = mig_controller(
        port,
        ControllerSettings(
            mode="enforce", batch_idle_s=0, batch_timeout_s=0, actuation=ActuationSettings(config_propagation_s=0)
        ),
        may_act=elector.is_leader,
    )

    def converge(pods: list[str]) -> None:
        for _ in range(60):
            elector.step()
            controller.tick()
            server.advance(10)
            settle(server, [port.nodes, port.pods])
            if all(server.twin.pod(f"team-b/{name}").node for name in pods):
                return
        pytest.fail(f"{pods} were not placed")

    port.start()
    try:
        converge(big)
        # The second round: the big pods finish; seven 1g.5gb pods need one GPU split into sevenths.
        for name in big:
            v1.delete_namespaced_pod(name, "team-b")
        small = [f"small-{i}" for i in range(7)]
        for name in small:
            v1.create_namespaced_pod("team-b", pending_pod(name, {"nvidia.com/mig-1g.5gb": 1}, priority=1000))
        settle(server, [port.nodes, port.pods])
        converge(small)
        port.events.flush()
        elector.release()
    finally:
        port.stop()
    return [e.pod for e in server.twin.evictions if e.outcome == "evicted"]


def run_agent(server: TwinApiServer, tmp_path: Path) -> None:
    """The agent's writer, as `migopt agent` builds it (kubeconfig instead of the in-cluster config)."""
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
    gpu = FakeGpu("A100-40GB", "GPU-a", instances=[FakeInstance("7g.40gb", start=0, gi=0, processes=1)])
    agent = NodeAgent(FakeNvml([gpu]), kubernetes_writer("node-a", kubeconfig))
    assert agent.step().written


def test_rbac_grants_exactly_what_the_controller_and_agent_request(
    requests_log: RequestLog, default_client_config: None, tmp_path: Path
) -> None:
    objs = render("default")
    settings = settings_of(objs, tmp_path)
    with TwinApiServer(small_twin(), speed=0) as server:
        evicted = run_controller(server, settings)
        before = server.requests
        run_agent(server, tmp_path)
        agent_counts = server.requests - before
    # The run did what an RBAC check needs: reconfigurations with an eviction.
    assert evicted == ["team-a/train-0"], evicted
    # The hook saw what the facade counted (`server.requests`, by verb and resource).
    assert requests_log.counts("agent") == agent_counts
    assert requests_log.counts("controller") == before - requests_log.counts("setup")
    for phase, account in (("controller", CONTROLLER_SA), ("agent", AGENT_SA)):
        made = requests_log.by_client[phase]
        grants = grants_for(objs, account)
        denied = sorted({r for r in made if not any(r.allowed_by(g) for g in grants)}, key=str)
        assert not denied, f"{phase}: requests the RBAC does not grant: {denied}"
        unused = sorted((g for g in grants if not any(r.allowed_by(g) for r in made)), key=str)
        assert not unused, f"{phase}: grants no request needed: {unused}"
        assert {(g.group, g.resource, g.verb) for g in grants} == {(r.group, r.resource, r.verb) for r in made}
    controller = requests_log.by_client["controller"]
    configmap_namespaces = {settings.kube.mig_config_namespace, settings.kube.records_namespace}
    assert {r.namespace for r in controller if r.resource == "configmaps"} == configmap_namespaces
    assert {r.namespace for r in controller if r.resource == "leases"} == {settings.leader.lease_namespace}
    assert {r.namespace for r in controller if r.resource == "events"} >= {"team-b", "default"}
    assert {(r.verb, r.resource, r.name) for r in requests_log.by_client["agent"]} == {("patch", "nodes", "node-a")}


# ---- 5. the README's overlay examples ------------------------------------------------------------------------


def _readme_overlays() -> list[str]:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    return [textwrap.dedent(b) for b in blocks if b.lstrip().startswith("# my-overlay/kustomization.yaml")]


def test_the_readmes_overlay_examples_render_to_what_they_promise(tmp_path: Path) -> None:
    """deploy/README.md shows an overlay pointing the images at another registry by digest, and one setting another
    Helm release's label: both render, and do what the text says."""
    examples = _readme_overlays()
    assert len(examples) == 2
    digest = "sha256:" + "0" * 64
    rendered = []
    for index, example in enumerate(examples):
        overlay = tmp_path / f"overlay-{index}"
        overlay.mkdir()
        text = example.replace("../deploy", os.path.relpath(DEPLOY, overlay)).replace("sha256:...", digest)
        (overlay / "kustomization.yaml").write_text(text, encoding="utf-8")
        done = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        rendered.append(tuple(d for d in yaml.safe_load_all(done.stdout) if d))
    images, release = rendered
    assert pod_spec(images, "Deployment", "migopt-controller")["containers"][0]["image"] == (
        f"registry.example.com/migopt@{digest}"
    )
    assert pod_spec(images, "DaemonSet", "migopt-agent")["containers"][0]["image"] == (
        f"registry.example.com/migopt-agent@{digest}"
    )
    labelled = {o["kind"]: o["metadata"]["labels"]["release"] for o in release if "release" in o["metadata"]["labels"]}
    assert labelled == {"ServiceMonitor": "monitoring", "PrometheusRule": "monitoring"}


def test_the_openshift_overlay_reads_usage_from_openshift_monitoring(tmp_path: Path) -> None:
    """https to the Thanos querier, verified against the injected service CA, with the pod's rotated token."""
    objs = render("openshift")
    settings = settings_of(objs, tmp_path)
    assert settings.prometheus_url == "https://thanos-querier.openshift-monitoring.svc:9091"
    assert settings.usage.tls_verify and settings.usage.ca_file and settings.usage.bearer_token_file
    ca = one(objs, "ConfigMap", "migopt-service-ca")
    assert ca["metadata"]["annotations"]["service.beta.openshift.io/inject-cabundle"] == "true"
    spec = pod_spec(objs, "Deployment", "migopt-controller")
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    ca_folder, ca_file = settings.usage.ca_file.rsplit("/", 1)
    assert ca_file == "service-ca.crt" and volumes[mounts[ca_folder]]["configMap"]["name"] == "migopt-service-ca"
    token_folder = settings.usage.bearer_token_file.rsplit("/", 1)[0]
    assert "serviceAccountToken" in str(volumes[mounts[token_folder]]["projected"]["sources"])
    binding = one(objs, "ClusterRoleBinding", "migopt-controller-monitoring-view")
    assert binding["roleRef"]["name"] == "cluster-monitoring-view"
    controller = {"kind": "ServiceAccount", "name": "migopt-controller", "namespace": "migopt-system"}
    assert binding["subjects"] == [controller]
