"""Between the twin and the object store: twin state rendered into objects, API writes turned into twin calls.

`sync()` re-renders only what changed: a node when `Twin.node_version` moved, a pod when its phase, binding,
termination or deletion did; new twin pods are found past the last one seen (the twin keeps every pod, in
creation order). Writes go to the twin first (`patch_node`, `set_unschedulable`, `add_pod`, `evict`, ...), then
a sync makes the store (and so every watcher) see the twin's answer, so the twin's mig-manager, operands and
scheduler react exactly as they do in-process. The owned mig-parted ConfigMap is bridged both ways.

Node agent reports are stamped with the wall clock (`wall_clock`), not simulated time: the agent they stand
for stamps its reads with its own clock, and a controller compares them with its wall clock, which simulated
time at `speed` != 1 would run ahead of or behind. Like the agent's heartbeat, a node whose report is
`report_refresh_s` wall seconds old is rendered again on the next sync, changed or not (the server's clock
thread syncs at least every second; with `speed=0`, `advance()` and every API write, such as a controller's
lease renewals and Events, do).
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from kubefacade.errors import ApiError, invalid, not_found
from kubefacade.objects import PDBS, min_available, namespace_object
from kubefacade.selectors import match_labels_selector
from kubefacade.store import ObjectStore, Stored
from optimizer.controller.eviction import EvictionVerdict, eviction_verdict
from optimizer.controller.port import EvictionOutcome
from optimizer.kube.objects import eviction_candidate
from simulations.twin.api.pod_updates import updated_spec
from simulations.twin.api.render import (
    DURATION_ANNOTATION,
    IGNORES_EVICTION_ANNOTATION,
    UNSCHEDULABLE_TAINT,
    PodMeta,
    node_object,
    pod_object,
    split_name,
)
from simulations.twin.api.scheduling import (
    SCHEDULER,
    FailedSchedulingRecorder,
    NodeFacts,
    SchedulingEvent,
    node_facts,
    unschedulable_message,
)
from simulations.twin.cluster import Twin
from simulations.twin.state import PodPhase, TwinPod
from solver.errors import MigoptError
from solver.snapshot import MAX_DEVICES_PER_REQUEST, NodeSelectorTerm, Taint, Toleration

MAX_SCHEDULING_EVENTS = 200  # a sync's FailedScheduling writes: about what a real scheduler gets through a second
REPORT_REFRESH_S = 60.0  # wall seconds: well within any sane report_max_age_s (the adapter's default is 600)
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_PodKey = tuple[object, ...]


class ConfigMapRef(BaseModel):
    """The ConfigMap key holding the mig-parted file the twin's mig-managers read."""

    model_config = ConfigDict(frozen=True)

    namespace: str = "gpu-operator"
    name: str = "migopt-mig-config"
    key: str = "config.yaml"


def _diff(old: Mapping[str, str] | None, new: Mapping[str, Any] | None) -> dict[str, str | None]:
    old, new = old or {}, new or {}
    patch: dict[str, str | None] = {k: None for k in old if k not in new}
    for key, value in new.items():
        if old.get(key) != value:
            patch[key] = value
    return patch


def _check_labels(kind: str, name: str, labels: Mapping[str, Any]) -> None:
    for key, value in labels.items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            raise invalid(
                kind, name, f'metadata.labels: Invalid value: "{value}": a valid label must be an empty string or '
                "consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
                f"character (label {key})",
            )  # fmt: skip


def _quantity(kind: str, name: str, resource: str, value: Any) -> int:
    try:
        number = float(str(value))
    except ValueError:
        raise invalid(kind, name, f"spec.containers.resources: Invalid value: {value!r} for {resource}") from None
    if not math.isfinite(number) or number != int(number) or number < 0:
        raise invalid(kind, name, f"spec.containers.resources: {resource} must be a non-negative whole number")
    return min(int(number), MAX_DEVICES_PER_REQUEST)  # the API stores any size; the twin reads this many at most


def pod_requests(name: str, spec: Mapping[str, Any]) -> dict[str, int]:
    """The `nvidia.com/*` devices the pod's containers ask for (limits, else requests), summed; a count beyond
    `MAX_DEVICES_PER_REQUEST` (more than any node holds) is read as that many, as the planner reads it."""
    total: dict[str, int] = {}
    for container in spec.get("containers") or []:
        resources = container.get("resources") or {}
        asked = dict(resources.get("requests") or {}) | dict(resources.get("limits") or {})
        for resource, value in asked.items():
            if resource.startswith("nvidia.com/"):
                total[resource] = total.get(resource, 0) + _quantity("Pod", name, resource, value)
    return {resource: min(count, MAX_DEVICES_PER_REQUEST) for resource, count in total.items()}


def _rules_verdict(namespace: str, name: str, annotations: Any, owners: Any) -> EvictionVerdict:
    """The eviction rules the Kubernetes adapter applies, on a pod's API metadata, for the twin's own snapshot.
    Budgets are left to the twin: it refuses such an eviction when asked (429), as the API does."""
    meta = {"namespace": namespace, "name": name, "annotations": annotations, "ownerReferences": owners}
    return eviction_verdict(eviction_candidate({"metadata": meta}))


class TwinBridge:
    """Keeps the store's nodes, pods, mig-parted ConfigMap and Events equal to the twin's, and writes back."""

    def __init__(
        self, twin: Twin, store: ObjectStore, *, agent_annotations: bool, mig_config: ConfigMapRef,
        timestamp: Callable[[float], str], report_refresh_s: float = REPORT_REFRESH_S,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.twin = twin
        self.store = store
        self.agent = agent_annotations
        self.mig_config = mig_config
        self._timestamp = timestamp
        self._node_versions: dict[str, tuple[object, ...]] = {}
        self.report_refresh_s = report_refresh_s
        self.wall_clock = wall_clock
        self._reported_at: dict[str, float] = {}  # wall time each node's agent report was rendered at
        self._node_index: dict[str, int] = {}
        self._pods_seen = 0
        self._live: dict[str, _PodKey | None] = {}  # twin pods that may still change, by twin name
        self._meta: dict[str, PodMeta] = {}  # pods created or edited through the API, by twin name
        self._events_seen = 0
        self._config_seen: str | None = None
        self._config_synced = False
        self._fed_pdbs: set[str] = set()
        self._scheduling = FailedSchedulingRecorder()
        self._cluster_version = 0  # moves whenever a node changes (labels, cordon, devices, holdings)
        self._messages: dict[str, str] = {}  # unschedulable messages by what the pod asks, for `_cluster_version`
        self._messages_version = -1
        self._facts: dict[str, tuple[object, NodeFacts]] = {}  # per node, with the node version it was read at
        self._rendered_message: dict[str, str] = {}  # the message each pending pod's condition shows
        self.syncs = 0

    # ---- twin → store -----------------------------------------------------------------------------------

    def sync(self) -> None:
        self.syncs += 1
        self._sync_config()
        self._sync_nodes()
        self._sync_pods()
        self._sync_scheduling()
        self._sync_events()
        self._sync_budget_status()

    def _sync_nodes(self) -> None:
        now = self.wall_clock()
        for name, node in self.twin.nodes.items():
            version = self.twin.node_version(name)
            due = self.agent and now - self._reported_at.get(name, -math.inf) >= self.report_refresh_s
            if self._node_versions.get(name) == version and not due:
                continue
            if self._node_versions.get(name) != version:
                self._cluster_version += 1
            index = self._node_index.setdefault(name, len(self._node_index))
            self.store.put("nodes", node_object(self.twin, node, index, self._timestamp, self.agent, now))
            self._node_versions[name] = version
            self._reported_at[name] = now
        for name in [n for n in self._node_versions if n not in self.twin.nodes]:
            self._cluster_version += 1
            del self._node_versions[name]
            self._reported_at.pop(name, None)
            self.store.delete("nodes", "", name)

    def _sync_pods(self) -> None:
        pods = self.twin.pods
        if len(pods) > self._pods_seen:
            for pod in itertools.islice(pods.values(), self._pods_seen, None):
                self._live[pod.name] = None
            self._pods_seen = len(pods)
        for name, seen in list(self._live.items()):
            pod = pods[name]
            key = (pod.phase, pod.node, pod.terminating_since, pod.deleted_at)
            if key == seen:
                continue
            namespace, short = split_name(name)
            if pod.deleted_at is not None:
                del self._live[name]
                self._scheduling.forget(name)
                self._rendered_message.pop(name, None)
                self.store.delete("pods", namespace, short)
                continue
            self._render_pod(pod)
            if pod.phase == PodPhase.SUCCEEDED:
                del self._live[name]
            else:
                self._live[name] = key

    def _render_pod(self, pod: TwinPod) -> Stored:
        meta = self._meta.get(pod.name) or self._meta.get(pod.origin)
        message = ""
        if pod.phase == PodPhase.PENDING and pod.node is None:
            message = self._rendered_message[pod.name] = self._unschedulable(pod)
        obj = pod_object(pod, meta, self._timestamp, message)
        namespace = obj["metadata"]["namespace"]
        if self.store.get("namespaces", "", namespace) is None:
            self.store.put("namespaces", namespace_object(namespace))
        return self.store.put("pods", obj)

    def _unschedulable(self, pod: TwinPod) -> str:
        """Why no node runs the pod now; computed once per distinct ask while the cluster stays as it is."""
        if self._messages_version != self._cluster_version:
            self._messages.clear()
            self._messages_version = self._cluster_version
            for name, node in self.twin.nodes.items():
                version = self._node_versions.get(name)
                known = self._facts.get(name)
                if known is None or known[0] != version:
                    self._facts[name] = (version, node_facts(self.twin, node))
            for name in [n for n in self._facts if n not in self.twin.nodes]:
                del self._facts[name]
        spec = pod.spec
        ask = repr((sorted(spec.requests.items()), sorted(spec.node_selector.items()), spec.node_affinity,
                    spec.tolerations))  # fmt: skip
        message = self._messages.get(ask)
        if message is None:
            facts = (known for _, known in self._facts.values())
            message = self._messages[ask] = unschedulable_message(pod, facts)
        return message

    def _sync_scheduling(self) -> None:
        """The scheduler's failed attempts on pending pods, as `FailedScheduling` Events (see `scheduling`); at most
        `MAX_SCHEDULING_EVENTS` a sync, the rest wait for the next, as a real scheduler works down its queue."""
        pods, now, written = self.twin.pods, self.twin.now(), 0
        for name in self._live:
            pod = pods[name]
            if pod.phase != PodPhase.PENDING or pod.node is not None:
                if self._rendered_message.pop(name, None) is not None:
                    self._scheduling.forget(name)
                continue
            if written >= MAX_SCHEDULING_EVENTS or not self._scheduling.due(name, now, self._cluster_version):
                continue
            message = self._unschedulable(pod)
            if self._rendered_message.get(name) != message:
                self._render_pod(pod)  # the scheduler updates the PodScheduled condition with what it found
            write = self._scheduling.attempt(name, message, now, self._cluster_version)
            if write is not None:
                self._write_scheduling_event(write)
                written += 1

    def _write_scheduling_event(self, write: SchedulingEvent) -> None:
        stamp = self._timestamp(self.twin.now())
        current = self.store.get("events", write.namespace, write.name)
        if current is not None and not write.first:
            obj = current.obj | {"metadata": dict(current.obj["metadata"])}  # put() restamps the metadata only
            obj["count"], obj["lastTimestamp"] = write.count, stamp
            self.store.put("events", obj)
            return
        pod = self.store.get("pods", write.namespace, write.pod)
        about = {"apiVersion": "v1", "kind": "Pod", "name": write.pod, "namespace": write.namespace}
        if pod is not None:
            about |= {"uid": pod.obj["metadata"]["uid"], "resourceVersion": pod.obj["metadata"]["resourceVersion"]}
        self.store.put("events", {
            "apiVersion": "v1", "kind": "Event", "metadata": {"name": write.name, "namespace": write.namespace},
            "involvedObject": about, "reason": "FailedScheduling", "message": write.message, "type": "Warning",
            "count": write.count, "firstTimestamp": stamp, "lastTimestamp": stamp,
            "source": {"component": SCHEDULER}, "reportingComponent": SCHEDULER, "reportingInstance": SCHEDULER,
        })  # fmt: skip

    def _sync_events(self) -> None:
        for event in self.twin.events[self._events_seen :]:
            self._events_seen += 1
            namespace, name = split_name(event.name) if event.kind == "Pod" else ("default", event.name)
            stamp = self._timestamp(event.time)
            about_ns = namespace if event.kind == "Pod" else ""
            self.store.put("events", {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{name}.twin{self._events_seen:08x}", "namespace": namespace},
                "involvedObject": {"kind": event.kind, "name": name, "namespace": about_ns},
                "reason": event.reason, "message": event.message, "type": "Normal", "count": 1,
                "firstTimestamp": stamp, "lastTimestamp": stamp, "source": {"component": "migopt"},
            })  # fmt: skip

    def _sync_config(self) -> None:
        text = self.twin.read_mig_config()
        if self._config_synced and text == self._config_seen:
            return
        self._config_synced, self._config_seen = True, text
        ref = self.mig_config
        current = self.store.get("configmaps", ref.namespace, ref.name)
        if text is None:
            if current is not None:
                self.store.delete("configmaps", ref.namespace, ref.name)
            return
        obj: dict[str, Any] = copy.deepcopy(current.obj) if current else {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ref.name, "namespace": ref.namespace},
        }  # fmt: skip
        data: dict[str, Any] = obj.setdefault("data", {})
        if data.get(ref.key) != text:
            data[ref.key] = text
            if self.store.get("namespaces", "", ref.namespace) is None:
                self.store.put("namespaces", namespace_object(ref.namespace))
            self.store.put("configmaps", obj)

    # ---- store → twin: the owned ConfigMap --------------------------------------------------------------

    # ---- the facade's backend protocol (kubefacade.backend.Backend) ----------------------------------------

    owned = frozenset({"nodes", "pods"})

    def create(self, resource: str, namespace: str, obj: dict[str, Any]) -> Stored:
        if resource == "nodes":
            raise ApiError(405, "the twin's nodes come from its scenario: nodes cannot be created through the facade")
        return self.create_pod(namespace, obj)

    def replace(self, resource: str, namespace: str, name: str, obj: Mapping[str, Any]) -> Stored:
        return self.write_node(name, obj) if resource == "nodes" else self.write_pod(namespace, name, obj)

    def delete(self, resource: str, namespace: str, name: str) -> Stored:
        return self.delete_node(name) if resource == "nodes" else self.delete_pod(namespace, name)

    def stored_changed(self, resource: str, namespace: str, name: str, obj: Mapping[str, Any] | None) -> None:
        if resource == "configmaps" and self.is_mig_config(namespace, name):
            self.config_written(obj)
            self.sync()
        elif self.agent and self._reports_due():
            self.sync()  # any write (a lease renewal, an Event) re-stamps the reports due, even at speed 0

    def _reports_due(self) -> bool:
        now = self.wall_clock()
        return any(now - self._reported_at.get(n, -math.inf) >= self.report_refresh_s for n in self.twin.nodes)

    def is_mig_config(self, namespace: str, name: str) -> bool:
        return (namespace, name) == (self.mig_config.namespace, self.mig_config.name)

    def config_written(self, obj: Mapping[str, Any] | None) -> None:
        """The owned ConfigMap was created, replaced, patched (obj) or deleted (None) through the API."""
        text = None if obj is None else (obj.get("data") or {}).get(self.mig_config.key)
        if text is None:
            self.twin.delete_mig_config()
        else:
            self.twin.write_mig_config(str(text))
        self._config_synced, self._config_seen = True, self.twin.read_mig_config()

    # ---- nodes ------------------------------------------------------------------------------------------

    def write_node(self, name: str, new: Mapping[str, Any]) -> Stored:
        """Apply a node's new desired object: labels and annotations, cordon, taints; the rest is the twin's."""
        current = self.store.get("nodes", "", name)
        if current is None or name not in self.twin.nodes:
            raise not_found("nodes", name)
        old_meta, new_meta = current.obj["metadata"], new.get("metadata") or {}
        labels = _diff(old_meta.get("labels"), new_meta.get("labels"))
        _check_labels("Node", name, {k: v for k, v in labels.items() if v is not None})
        annotations = _diff(old_meta.get("annotations"), new_meta.get("annotations"))
        if any(v is not None and not isinstance(v, str) for v in annotations.values()):
            raise invalid("Node", name, "metadata.annotations: values must be strings")
        spec = new.get("spec") or {}
        try:
            taints = [
                Taint.model_validate({k: t[k] for k in ("key", "value", "effect") if k in t})
                for t in spec.get("taints") or [] if t.get("key") != UNSCHEDULABLE_TAINT
            ]  # fmt: skip
        except (ValidationError, TypeError, AttributeError) as err:
            raise invalid("Node", name, f"spec.taints: {err}") from None
        if labels or annotations:
            self.twin.patch_node(name, labels=labels, annotations=annotations)
        unschedulable = bool(spec.get("unschedulable"))
        if unschedulable != self.twin.node(name).unschedulable:
            self.twin.set_unschedulable(name, unschedulable)
        if taints != self.twin.node(name).taints:
            self.twin.set_taints(name, taints)
        self.sync()
        stored = self.store.get("nodes", "", name)
        assert stored is not None
        return stored

    def delete_node(self, name: str) -> Stored:
        current = self.store.get("nodes", "", name)
        if current is None or name not in self.twin.nodes:
            raise not_found("nodes", name)
        self.twin.remove_node(name)
        self.sync()
        return current

    # ---- pods -------------------------------------------------------------------------------------------

    def twin_pod_name(self, namespace: str, name: str) -> str:
        """The twin's name for an API pod: `namespace/name`, or the twin's bare name for `default` pods."""
        if namespace == "default" and name in self.twin.pods and f"default/{name}" not in self.twin.pods:
            return name
        return f"{namespace}/{name}"

    def create_pod(self, namespace: str, obj: dict[str, Any]) -> Stored:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        name = meta["name"]
        annotations = dict(meta.get("annotations") or {})
        owners = list(meta.get("ownerReferences") or [])
        _check_labels("Pod", name, meta.get("labels") or {})
        duration = annotations.get(DURATION_ANNOTATION)
        try:
            duration_s = float(duration) if duration is not None else None
            affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
                "requiredDuringSchedulingIgnoredDuringExecution"
            ) or {}
            terms = [
                NodeSelectorTerm.model_validate({"matchExpressions": t.get("matchExpressions") or []})
                for t in affinity.get("nodeSelectorTerms") or []
            ]
            tolerations = [
                Toleration.model_validate({k: t[k] for k in ("key", "operator", "value", "effect") if k in t})
                for t in spec.get("tolerations") or []
            ]
            node_selector = {str(k): str(v) for k, v in (spec.get("nodeSelector") or {}).items()}
            priority = int(spec.get("priority") or 0)
        except (ValidationError, ValueError, TypeError, AttributeError) as err:
            raise invalid("Pod", name, f"spec: {str(err).splitlines()[0]}") from None
        twin_name = f"{namespace}/{name}"
        verdict = _rules_verdict(namespace, name, annotations, owners)
        try:
            pod = self.twin.add_pod(
                twin_name, pod_requests(name, spec), priority=priority, node_selector=node_selector,
                node_affinity=terms, tolerations=tolerations, duration_s=duration_s, evictable=verdict.allowed,
                ignores_eviction=annotations.get(IGNORES_EVICTION_ANNOTATION) == "true",
                owned=any(o.get("controller") for o in owners),
            )  # fmt: skip
        except MigoptError as err:
            raise invalid("Pod", name, str(err)) from None
        if not verdict.allowed:
            pod.spec = pod.spec.model_copy(update={"protection": verdict.protection})
        client_spec = {k: v for k, v in spec.items() if k not in ("nodeName", "priority")}
        self._meta[twin_name] = PodMeta(
            labels=dict(meta.get("labels") or {}), annotations=annotations, owner_references=owners, spec=client_spec
        )
        self._live[twin_name] = None
        self.sync()
        stored = self.store.get("pods", namespace, name)
        assert stored is not None
        return stored

    def write_pod(self, namespace: str, name: str, new: Mapping[str, Any]) -> Stored:
        """Labels, annotations and owners of a pod may change, and in its spec what Kubernetes lets change
        (`pod_updates`)."""
        twin_name = self.twin_pod_name(namespace, name)
        pod = self.twin.pods.get(twin_name)
        current = self.store.get("pods", namespace, name)
        if pod is None or current is None:
            raise not_found("pods", name)
        new_meta = new.get("metadata") or {}
        _check_labels("Pod", name, new_meta.get("labels") or {})
        old = current.obj
        new_spec = updated_spec(name, old.get("spec") or {}, new.get("spec") or {})
        meta = self._meta.get(twin_name) or self._meta.get(pod.origin)
        spec = new_spec if new_spec is not None else (meta.spec if meta is not None else None)
        self._meta[twin_name] = PodMeta(
            labels=dict(new_meta.get("labels") or {}), annotations=dict(new_meta.get("annotations") or {}),
            owner_references=list(new_meta.get("ownerReferences") or old["metadata"].get("ownerReferences") or []),
            spec=spec,
        )  # fmt: skip
        written = self._meta[twin_name]
        old_meta = old["metadata"]
        before = _rules_verdict(namespace, name, old_meta.get("annotations"), old_meta.get("ownerReferences"))
        after = _rules_verdict(namespace, name, written.annotations, written.owner_references)
        if after != before:  # only what the rules decide changes: a reason the twin was given otherwise stays
            pod.spec = pod.spec.model_copy(update={"evictable": after.allowed, "protection": after.protection})
        same = (
            new_spec is None
            and all((new_meta.get(k) or {}) == (old["metadata"].get(k) or {}) for k in ("labels", "annotations"))
            and written.owner_references == (old["metadata"].get("ownerReferences") or [])
        )
        return current if same else self._render_pod(pod)

    def delete_pod(self, namespace: str, name: str) -> Stored:
        current = self.store.get("pods", namespace, name)
        if current is None:
            raise not_found("pods", name)
        if self.twin.delete_pod(self.twin_pod_name(namespace, name)):
            self.sync()
        else:  # completed: only the API object is left
            self.store.delete("pods", namespace, name)
        return current

    def evict(self, namespace: str, name: str, dry_run: bool = False) -> None:
        """The Eviction API: returns on success (201), raises 429 when a budget refuses, 404 when gone; a dry run
        answers the same from the budgets the store holds, and evicts nothing."""
        current = self.store.get("pods", namespace, name)
        if current is None:
            raise not_found("pods", name)
        twin_name = self.twin_pod_name(namespace, name)
        budgets = self.feed_pdbs()
        if dry_run:
            outcome = self._dry_run_outcome(twin_name, budgets)
        else:
            outcome = self.twin.evict(twin_name)
            if outcome is EvictionOutcome.GONE and current.obj["status"].get("phase") == "Succeeded":
                self.store.delete("pods", namespace, name)  # a completed pod is simply deleted
                return
            self.sync()
        if outcome is EvictionOutcome.GONE:
            raise not_found("pods", name)
        if outcome is EvictionOutcome.BLOCKED:
            raise ApiError(
                429, "Cannot evict pod as it would violate the pod's disruption budget.",
                details={"causes": [{"reason": "DisruptionBudget", "message": self._blocking(twin_name, budgets)}]},
            )  # fmt: skip

    def _dry_run_outcome(self, twin_name: str, budgets: Mapping[str, tuple[int, set[str]]]) -> EvictionOutcome:
        pod = self.twin.pods.get(twin_name)
        if pod is None or not pod.active:
            return EvictionOutcome.GONE
        if pod.phase != PodPhase.RUNNING or pod.terminating:
            return EvictionOutcome.EVICTED
        for minimum, members in budgets.values():
            if twin_name in members and self._healthy(members) - 1 < minimum:
                return EvictionOutcome.BLOCKED
        return EvictionOutcome.EVICTED

    def _healthy(self, members: set[str]) -> int:
        pods = self.twin.pods
        return sum(
            1 for p in members if (pod := pods.get(p)) is not None and pod.active
            and pod.phase == PodPhase.RUNNING and not pod.terminating
        )  # fmt: skip

    def _blocking(self, twin_name: str, budgets: Mapping[str, tuple[int, set[str]]]) -> str:
        for pdb, (minimum, members) in budgets.items():
            if twin_name not in members:
                continue
            healthy = self._healthy(members)
            if healthy - 1 < minimum:
                budget = split_name(pdb)[1]
                return f"The disruption budget {budget} needs {minimum} healthy pods and has {healthy} currently"
        return "The disruption budget does not allow this eviction now"

    # ---- disruption budgets -----------------------------------------------------------------------------

    def feed_pdbs(self) -> dict[str, tuple[int, set[str]]]:
        """Give the twin every stored budget with the pods its selector matches now; returns them by name."""
        budgets: dict[str, tuple[int, set[str]]] = {}
        for stored in self.store.items(PDBS):
            obj = stored.obj
            namespace, name = obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
            spec = obj.get("spec") or {}
            matches = match_labels_selector(spec.get("selector"))
            members = {
                self.twin_pod_name(namespace, p.obj["metadata"]["name"])
                for p in self.store.items("pods", namespace)
                if matches(p.obj["metadata"].get("labels") or {}) and "deletionTimestamp" not in p.obj["metadata"]
                and p.obj["status"].get("phase") != "Succeeded"
            }  # fmt: skip
            budgets[f"{namespace}/{name}"] = (min_available(spec, len(members)), members)
        for key in self._fed_pdbs - budgets.keys():
            self.twin.remove_pdb(key)
        for key, (minimum, members) in budgets.items():
            self.twin.add_pdb(key, members, minimum)
        self._fed_pdbs = set(budgets)
        return budgets

    def _sync_budget_status(self) -> None:
        """What Kubernetes' disruption controller publishes on each budget: how many of its pods are healthy and
        how many may be disrupted now (controllers plan around `disruptionsAllowed: 0`)."""
        budgets = self.feed_pdbs() if any(True for _ in self.store.items(PDBS)) else {}
        for key, (minimum, members) in budgets.items():
            namespace, name = split_name(key)
            stored = self.store.get(PDBS, namespace, name)
            if stored is None:
                continue
            healthy = self._healthy(members)
            status = {
                "currentHealthy": healthy, "desiredHealthy": minimum, "expectedPods": len(members),
                "disruptionsAllowed": max(0, healthy - minimum),
                "observedGeneration": stored.obj["metadata"].get("generation", 1),
            }  # fmt: skip
            if stored.obj.get("status") != status:
                updated = copy.deepcopy(stored.obj)
                updated["status"] = status
                self.store.put(PDBS, updated)
