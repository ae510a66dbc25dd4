"""Twin nodes and pods as Kubernetes JSON objects (the shape `kubectl` and the `kubernetes` client read).

Nodes: the twin's labels (GFD's and mig-manager's included) and annotations, cordon and taints (a cordoned
node also carries the `node.kubernetes.io/unschedulable` taint, as the node controller adds it), the device
plugin's capacity/allocatable as quantity strings next to cpu/memory/pods defaults, Ready, nodeInfo and
addresses; with agent annotations, the node agent's `migopt.io/gpu-report` stamped `observed_at` (wall clock).

Pods: metadata the client gave at create (or, for pods the twin made, `migopt.io/twin-lineage` = the first
pod's name in its lineage and `migopt.io/twin-app` = that name without a trailing `-<number>`, plus a
ReplicaSet owner when a controller re-creates it), one container asking for its MIG resources, the binding,
and a status with `PodScheduled=False/Unschedulable` while pending (its message: `scheduling`). Completed pods
stay, phase `Succeeded`, as a Job's pods do, until deleted through the API.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nvidia_protocol.agent_report import GPU_REPORT_ANNOTATION
from simulations.twin.api.agent import node_report
from simulations.twin.cluster import Twin
from simulations.twin.state import PodPhase, TwinNode, TwinPod

UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
LINEAGE_LABEL = "migopt.io/twin-lineage"
APP_LABEL = "migopt.io/twin-app"
DURATION_ANNOTATION = "migopt.io/twin-duration-s"
IGNORES_EVICTION_ANNOTATION = "migopt.io/twin-ignores-eviction"
KUBELET_VERSION = "v1.32.0"  # as the facade claims to be (kubefacade.resources.SERVER_VERSION)
NODE_DEFAULTS = {"cpu": "64", "memory": "512Gi", "pods": "110", "ephemeral-storage": "1Ti"}
IMAGE = "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04"
Timestamp = Callable[[float], str]


@dataclass
class PodMeta:
    """What a client gave a pod at create (labels, annotations, owners, its spec), kept for rendering."""

    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    owner_references: list[dict[str, Any]] = field(default_factory=list)
    spec: dict[str, Any] | None = None


def split_name(twin_name: str) -> tuple[str, str]:
    namespace, _, name = twin_name.rpartition("/")
    return namespace or "default", name


def label_value(text: str) -> str:
    """A valid label value (63 characters, alphanumeric at both ends) derived from `text`."""
    value = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63]
    return value.strip("._-")


def node_object(
    twin: Twin, node: TwinNode, index: int, timestamp: Timestamp, agent: bool, observed_at: float | None = None
) -> dict[str, Any]:
    labels = dict(node.labels)  # kubelet's well-known labels among them (`TwinNode.register`)
    annotations = dict(node.annotations)
    if agent:
        annotations[GPU_REPORT_ANNOTATION] = node_report(node, observed_at).to_annotation()
    taints = [t.model_dump() for t in node.taints]
    spec: dict[str, Any] = {"podCIDR": f"10.244.{index % 256}.0/24"}
    if node.unschedulable:
        spec["unschedulable"] = True
        taints.append({"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule", "timeAdded": timestamp(0.0)})
    if taints:
        spec["taints"] = taints
    others = {k: str(v) for k, v in node.other_allocatable.items()}
    capacity = NODE_DEFAULTS | others | {k: str(v) for k, v in twin.capacity(node.name).items()}
    allocatable = NODE_DEFAULTS | others | {k: str(v) for k, v in twin.allocatable(node.name).items()}
    address = f"10.0.{index // 250}.{index % 250 + 1}"
    ready = {
        "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
        "lastHeartbeatTime": timestamp(0.0), "lastTransitionTime": timestamp(0.0),
    }  # fmt: skip
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": labels, "annotations": annotations},
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": [ready],
            "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": node.name}],
            "nodeInfo": {
                "machineID": f"{index:032x}",
                "systemUUID": f"00000000-0000-0000-0000-{index:012x}",
                "bootID": f"twin-{index}",
                "kernelVersion": "6.8.0-twin",
                "osImage": "Ubuntu 22.04.4 LTS (migopt twin)",
                "containerRuntimeVersion": "containerd://1.7.13",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


def _quantities(requests: dict[str, int]) -> dict[str, str]:
    return {k: str(v) for k, v in sorted(requests.items())}


def _twin_spec(pod: TwinPod) -> dict[str, Any]:
    spec = pod.spec
    resources = _quantities(spec.requests)
    body: dict[str, Any] = {
        "containers": [
            {"name": "main", "image": IMAGE, "resources": {"requests": resources, "limits": dict(resources)}}
        ],
        "restartPolicy": "Never" if spec.duration_s is not None else "Always",
    }
    if spec.node_selector:
        body["nodeSelector"] = dict(spec.node_selector)
    if spec.node_affinity:
        terms = [t.model_dump(by_alias=True) for t in spec.node_affinity]
        body["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
        }
    if spec.tolerations:
        body["tolerations"] = [{k: v for k, v in t.model_dump().items() if v} for t in spec.tolerations]
    return body


def _status(pod: TwinPod, timestamp: Timestamp, unschedulable: str) -> dict[str, Any]:
    created = timestamp(pod.created_at)
    if pod.phase == PodPhase.PENDING:
        scheduled = {
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": unschedulable, "lastTransitionTime": created,
        }  # fmt: skip
        return {"phase": "Pending", "conditions": [scheduled], "qosClass": "BestEffort"}
    started = timestamp(pod.started_at or pod.created_at)
    running = pod.phase == PodPhase.RUNNING
    state: dict[str, Any]
    if running:
        state = {"running": {"startedAt": started}}
    else:
        finished = timestamp(pod.finished_at or pod.created_at)
        state = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": finished}}
    ready = "True" if running else "False"
    conditions = [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
        {"type": "Initialized", "status": "True", "lastTransitionTime": started},
        {"type": "ContainersReady", "status": ready, "lastTransitionTime": started},
        {"type": "Ready", "status": ready, "lastTransitionTime": started},
    ]
    container = {
        "name": "main", "image": IMAGE, "imageID": "", "ready": running, "restartCount": 0, "started": running,
        "state": state,
    }  # fmt: skip
    return {
        "phase": str(pod.phase), "conditions": conditions, "containerStatuses": [container], "startTime": started,
        "qosClass": "BestEffort",
    }  # fmt: skip


def twin_labels(pod: TwinPod) -> dict[str, str]:
    origin = split_name(pod.origin)[1]
    return {LINEAGE_LABEL: label_value(origin), APP_LABEL: label_value(re.sub(r"-\d+$", "", origin))}


def pod_object(pod: TwinPod, meta: PodMeta | None, timestamp: Timestamp, unschedulable: str = "") -> dict[str, Any]:
    """`unschedulable`: why a pending pod is not scheduled (its PodScheduled condition's message)."""
    namespace, name = split_name(pod.name)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if meta is None:
        metadata["labels"] = twin_labels(pod)
        if pod.spec.owned:
            rs = label_value(f"{split_name(pod.origin)[1]}-rs")
            metadata["ownerReferences"] = [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": f"twin-rs-{rs}",
                 "controller": True, "blockOwnerDeletion": True}
            ]  # fmt: skip
        spec = _twin_spec(pod)
    else:
        if meta.labels:
            metadata["labels"] = dict(meta.labels)
        if meta.annotations:
            metadata["annotations"] = dict(meta.annotations)
        if meta.owner_references:
            metadata["ownerReferences"] = copy.deepcopy(meta.owner_references)
        spec = copy.deepcopy(meta.spec) if meta.spec is not None else _twin_spec(pod)
    if pod.terminating_since is not None:
        metadata["deletionTimestamp"] = timestamp(pod.terminating_since)
        metadata["deletionGracePeriodSeconds"] = 30
    spec["priority"] = pod.spec.priority
    spec.setdefault("schedulerName", "default-scheduler")
    if pod.node:
        spec["nodeName"] = pod.node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
        "status": _status(pod, timestamp, unschedulable),
    }
