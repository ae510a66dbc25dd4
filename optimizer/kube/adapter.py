"""The ClusterPort on a real cluster, through the client layer (`optimizer.kube.api`: the official `kubernetes` client).

Reads come from list+watch caches (nodes, GPU pods, PodDisruptionBudgets, the owned ConfigMap), so a reconcile
costs no list requests; writes go straight to the API under `ApiCaller`'s failure policy and are applied to
the caches from the API's response. What a node's GPUs hold comes from the best source available per node
(`optimizer.kube.layouts`); `sources` says which one each node's last snapshot used. Nodes whose GPUs NVIDIA's DRA
driver manages are marked unmanaged, and the devices its allocated ResourceClaims hold are busy, held by pods
migopt never evicts (`optimizer.kube.dra`); a cluster that does not serve resource.k8s.io/v1 simply has none.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, Field

from nvidia_protocol.agent_report import GPU_REPORT_ANNOTATION, NodeGpuReport
from nvidia_protocol.labels import MIG_CAPABLE_LABEL
from nvidia_protocol.migparted import MigPartedConfig, parse_config
from optimizer.actuators.mig_manager import read_status
from optimizer.controller.actuator import Phase
from optimizer.controller.port import ClusterPort, EvictionOutcome
from optimizer.controller.reasons import EventReason
from optimizer.kube.api import ApiCaller, ApiClient, KubeApi
from optimizer.kube.dra import DraReader, claim_of_driver, place_holds, slice_of_driver
from optimizer.kube.errors import Conflict, NotFound, TooManyRequests
from optimizer.kube.events import EventRecorder
from optimizer.kube.informer import Informer, wait_all_synced
from optimizer.kube.layouts import (
    UNATTRIBUTED_PRIORITY,
    DeviceHolder,
    HeldDevices,
    LayoutSource,
    ReportChecks,
    ReportRejected,
    report_from_annotation,
    resolve_layout,
)
from optimizer.kube.objects import (
    holds_devices,
    is_unschedulable,
    node_allocatable,
    node_taints,
    pending_pod,
    pod_key,
    pod_requests,
    pods_without_disruption_budget,
    running_pod,
)
from optimizer.kube.snapshot_pieces import (
    NodeInputs,
    NodePiece,
    PodPiece,
    report_observed_at,
    report_verdict,
    scheduling_key,
)
from solver.errors import MigoptError
from solver.protection import Protection
from solver.snapshot import PRODUCT_LABEL, ClusterSnapshot, NodeState, PendingPod, RunningPod

log = logging.getLogger(__name__)

MAX_PENDING_TEMPLATES = 4096
"""Distinct pending-pod specs remembered (a bound on memory, not a limit on pods)."""


class KubeSettings(BaseModel):
    """Where migopt's Kubernetes objects are and how it talks to the API."""

    mig_config_namespace: str = Field(default="gpu-operator", description="namespace of the owned mig-parted ConfigMap")
    mig_config_name: str = Field(default="migopt-mig-config", description="= ClusterPolicy migManager.config.name")
    mig_config_key: str = Field(default="config.yaml", description="the key mig-manager reads")
    records_namespace: str = Field(
        default="migopt-system", description="namespace of the controller's records of node changes"
    )
    records_name: str = Field(
        default="migopt-node-changes",
        description="ConfigMap holding them, one key per node; only the controller's "
        "ServiceAccount may write it (deploy/base/controller-rbac.yaml)",
    )
    watch_timeout_s: int = Field(default=300, ge=1)
    event_qps: float = Field(default=10.0, ge=0)
    sync_timeout_s: float = Field(default=60.0, gt=0)
    report_max_age_s: float = Field(
        default=600.0,
        gt=0,
        description="a node agent report observed longer ago (by this process's wall clock) is stale and not "
        "trusted; the agent's --heartbeat must be at most half of this",
    )
    report_max_skew_s: float = Field(
        default=60.0, ge=0, description="how far in the future a report's observed_at may be (node clocks ahead)"
    )


def _uses_gpus(pod: Mapping[str, Any]) -> bool:
    return bool(pod_requests(pod))


def _is_gpu_node(node: Mapping[str, Any]) -> bool:
    meta = node.get("metadata") or {}
    labels = meta.get("labels") or {}
    return (
        PRODUCT_LABEL in labels
        or labels.get(MIG_CAPABLE_LABEL) == "true"
        or (GPU_REPORT_ANNOTATION in (meta.get("annotations") or {}))
    )


class KubeClusterPort:
    """Implements `optimizer.controller.port.ClusterPort`. `holders` (optional) is the Prometheus fallback: which
    (node, GPU, profile) each pod holds per dcgm-exporter, or None when Prometheus is not available."""

    def __init__(
        self,
        api: KubeApi | ApiClient,
        settings: KubeSettings | None = None,
        *,
        caller: ApiCaller | None = None,
        holders: Callable[[], Sequence[DeviceHolder] | None] | None = None,
        instance: str = "migopt",
        on_report_rejected: Callable[[str, str], None] | None = None,
        on_dra_skipped: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings or KubeSettings()
        self.caller = caller or ApiCaller()
        self.api = KubeApi.of(api)
        s = self.settings
        timeout = s.watch_timeout_s
        self.nodes = Informer(self.api.nodes(), self.caller, watch_timeout_s=timeout)
        self.pods = Informer(self.api.pods(), self.caller, keep=_uses_gpus, watch_timeout_s=timeout)
        self.pdbs = Informer(self.api.pod_disruption_budgets(), self.caller, watch_timeout_s=timeout)
        owned_config = self.api.config_map_collection(s.mig_config_name, s.mig_config_namespace)
        self.configmaps = Informer(owned_config, self.caller, watch_timeout_s=timeout)
        records = self.api.config_map_collection(s.records_name, s.records_namespace)
        self.records = Informer(records, self.caller, watch_timeout_s=timeout)
        # NVIDIA's DRA driver: optional, since clusters before Kubernetes 1.34 do not serve resource.k8s.io/v1
        claims, slices = self.api.resource_claims(), self.api.resource_slices()
        self.claims = Informer(claims, self.caller, keep=claim_of_driver, watch_timeout_s=timeout, optional=True)
        self.slices = Informer(slices, self.caller, keep=slice_of_driver, watch_timeout_s=timeout, optional=True)
        self.informers = [self.nodes, self.pods, self.pdbs, self.configmaps, self.records, self.claims, self.slices]
        self.events = EventRecorder(
            self.api.create_event,
            self.caller,
            instance=instance,
            qps=s.event_qps,
        )
        self._holders = holders
        self._parsed: tuple[str, MigPartedConfig | None] | None = None
        self._reported: set[tuple[str, str]] = set()
        self._on_report_rejected = on_report_rejected  # (node, reason): the metrics exporter counts them
        self._on_dra_skipped = on_dra_skipped  # (resource, reason): a slice or claim that could not be read
        self._rejected: dict[str, str] = {}  # node -> reason its report is rejected for now
        self._advertised: dict[str, tuple[object, float | None]] = {}  # node -> (GPU resources, seen changing at)
        self._pod_pieces: dict[str, PodPiece] = {}  # the last snapshot's, by informer key
        self._node_pieces: dict[str, NodePiece] = {}  # the last snapshot's, by node name
        self._pending_templates: dict[str, PendingPod] = {}  # scheduling key -> a pending pod validated with it
        self._dra = DraReader()
        self._dra_noted: set[tuple[str, str]] = set()  # (node, note) of devices placed only conservatively
        self.sources: dict[str, str] = {}
        self.skipped_pods: dict[str, str] = {}
        self.dra_skipped: dict[str, str] = {}  # `resourceslices/<name>` or `resourceclaims/<ns>/<name>` -> why
        self.dra_skipped_total: Counter[str] = Counter()  # by resource: each object counted once per reason

    # ---- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the watches and wait for the first lists (`MigoptError` if the API does not answer in time)."""
        for informer in self.informers:
            informer.start()
        self.events.start()
        if not wait_all_synced(self.informers, self.settings.sync_timeout_s):
            missing = [i.resource for i in self.informers if not i.synced]
            raise MigoptError(f"could not list {', '.join(missing)} within {self.settings.sync_timeout_s:.0f}s")

    def sync_once(self) -> None:
        """List everything once, no watches (one-shot commands); a failed list raises its `KubeApiError`."""
        for informer in self.informers:
            informer.sync_once()

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop(wait=False)  # all at once, then wait for each
        for informer in self.informers:
            informer.stop()
        self.events.stop()

    @property
    def synced(self) -> bool:
        return all(i.synced for i in self.informers)

    # ---- ClusterPort: reading -------------------------------------------------------------------------

    def snapshot(self) -> ClusterSnapshot:
        """The cluster as the caches hold it. Built from pieces, one per pod and one per node, each rebuilt only
        when what it was built from changed since the last call (`snapshot_pieces`): a pass over a thousand
        unchanged nodes reuses them all and returns an equal snapshot."""
        now = self.now()
        pod_pieces = {key: self._pod_piece(key, pod) for key, pod in self.pods.entries()}
        self._pod_pieces = pod_pieces
        held_by_node: dict[str, list[HeldDevices]] = defaultdict(list)
        pending: list[PendingPod] = []
        bound: list[PodPiece] = []
        skipped: dict[str, str] = {}
        for pod in pod_pieces.values():
            if pod.held is not None and pod.node is not None:
                bound.append(pod)
                held_by_node[pod.node].append(pod.held)
            elif pod.pending is not None:
                pending.append(pod.pending)
            elif pod.skipped is not None:
                skipped[pod_key(pod.raw)] = pod.skipped
        self._report_skipped(skipped)
        no_budget = pods_without_disruption_budget(self.pdbs.items(), [pod.raw for pod in bound])
        running = {p.name: p for p in (self._running(pod, no_budget) for pod in bound)}
        dra = self._dra.read(self.slices.entries(), self.claims.entries())
        self._report_dra_skipped(dra.skipped)
        config = self._config()
        holders = self._holders() if self._holders else None
        holders_by_node: dict[str, list[DeviceHolder]] = defaultdict(list)
        for holder in holders or []:
            holders_by_node[holder.node].append(holder)
        records = self.read_records()
        nodes: list[NodeState] = []
        sources: dict[str, str] = {}
        node_pieces: dict[str, NodePiece] = {}
        for raw in sorted(self.nodes.items(), key=lambda n: n["metadata"]["name"]):
            if not _is_gpu_node(raw):
                continue
            name = raw["metadata"]["name"]
            on_node = None if holders is None else tuple(holders_by_node.get(name, ()))
            held = tuple(held_by_node.get(name, ()))
            inputs = NodeInputs(raw, config, held, on_node, records.get(name), dra.nodes.get(name))
            piece = self._node_piece(name, inputs, now)
            node_pieces[name] = piece
            sources[name] = piece.source
            if piece.node is not None:
                nodes.append(piece.node)
            running |= piece.extra
        self._node_pieces = node_pieces
        self.sources = sources
        for name, claimant in dra.holders.items():
            running[name] = _held_through_claim(running.get(name), claimant)
        return ClusterSnapshot(nodes=nodes, pods=pending, running=list(running.values()))

    def _pod_piece(self, key: str, pod: Mapping[str, Any]) -> PodPiece:
        """The last pass's piece while the informer still holds the same object; else built anew."""
        cached = self._pod_pieces.get(key)
        if cached is not None and cached.raw is pod:
            return cached
        if cached is not None and cached.raw == pod:  # relisted: an equal copy; compared by identity from now on
            return replace(cached, raw=pod)
        if holds_devices(pod):
            held = HeldDevices(pod=pod_key(pod), requests=pod_requests(pod))
            return PodPiece(raw=pod, node=pod["spec"]["nodeName"], held=held)
        if is_unschedulable(pod):
            try:
                return PodPiece(raw=pod, pending=self._pending(pod))
            except MigoptError as err:
                return PodPiece(raw=pod, skipped=str(err))
        return PodPiece(raw=pod)

    def _pending(self, pod: Mapping[str, Any]) -> PendingPod:
        """`pending_pod(pod)`; a pod whose scheduling spec was validated before (another replica) is that result
        renamed, which costs a twentieth. A spec that fails is not kept: its error names the pod."""
        key = scheduling_key(pod)
        template = self._pending_templates.get(key)
        if template is not None:
            return template.model_copy(update={"name": pod_key(pod)})
        result = pending_pod(pod)
        if len(self._pending_templates) >= MAX_PENDING_TEMPLATES:
            self._pending_templates.clear()  # specs of long-gone pods: start afresh
        self._pending_templates[key] = result
        return result

    @staticmethod
    def _running(piece: PodPiece, no_budget: Mapping[str, str]) -> RunningPod:
        """What evicting the bound pod costs; kept on its piece per blocking budget (usually none)."""
        budget = no_budget.get(pod_key(piece.raw)) if no_budget else None
        found = piece.running.get(budget)
        if found is None:
            found = piece.running[budget] = running_pod(piece.raw, no_budget)
        return found

    def _node_piece(self, name: str, inputs: NodeInputs, now: float) -> NodePiece:
        """The last pass's piece while its inputs are the same and its agent report's freshness is too."""
        s = self.settings
        cached = self._node_pieces.get(name)
        if (
            cached is not None
            and cached.inputs.same_as(inputs)
            and report_verdict(cached.observed_at, now, s.report_max_age_s, s.report_max_skew_s) == cached.verdict
        ):
            return cached if cached.inputs.raw is inputs.raw else replace(cached, inputs=inputs)
        node, source, extra = self._node(inputs, now)
        observed = report_observed_at(inputs.raw, name)
        verdict = report_verdict(observed, now, s.report_max_age_s, s.report_max_skew_s)
        return NodePiece(inputs, node, source, extra, observed, verdict)

    def _node(self, inputs: NodeInputs, now: float) -> tuple[NodeState | None, str, dict[str, RunningPod]]:
        raw = inputs.raw
        meta = raw["metadata"]
        name = meta["name"]
        labels = dict(meta.get("labels") or {})
        annotations = dict(meta.get("annotations") or {})
        base = NodeState(
            name=name,
            labels=labels,
            annotations=annotations,
            allocatable=node_allocatable(raw),
            taints=node_taints(raw),
            unschedulable=bool((raw.get("spec") or {}).get("unschedulable")),
            unmanaged=inputs.dra.managed_by if inputs.dra is not None else None,
        )
        on_node = None if inputs.holders is None else list(inputs.holders)
        rejected: list[ReportRejected] = []
        checks = self._report_checks(name, raw, base.allocatable, now)
        try:
            layout = resolve_layout(
                name, labels, annotations, inputs.config, list(inputs.held), on_node, checks=checks,
                on_reject=rejected.append,
            )  # fmt: skip
        except MigoptError as err:
            self._report_rejection(name, rejected)
            self._report_once(name, str(err))
            status = read_status(name, inputs.record) if inputs.record is not None else None
            if status is not None and status.phase is Phase.EVICTING:
                return None, f"waiting: {err}", {}  # a drain needs to know who holds what: wait for it
            return base, f"not planned: {err}", {}
        self._report_rejection(name, rejected)
        extra = {
            pod: RunningPod(name=pod, priority=UNATTRIBUTED_PRIORITY, protection=Protection.UNATTRIBUTED)
            for pod in layout.unattributed
        }
        extra |= {pod: RunningPod(name=pod, protection=Protection.GUESSED) for pod in layout.guessed}
        gpus = layout.gpus
        if inputs.dra is not None and inputs.dra.holds:
            gpus, notes = place_holds(gpus, inputs.dra.holds, _agent_report(annotations, name))
            for note in notes:
                self._note_dra(name, note)
        node = base.model_copy(update={"gpus": gpus})
        return node, str(layout.source if layout.source is not LayoutSource.AGENT else "agent"), extra

    def _config(self) -> MigPartedConfig | None:
        text = self.read_mig_config()
        if text is None:
            return None
        if self._parsed is None or self._parsed[0] != text:
            try:
                parsed: MigPartedConfig | None = parse_config(text)
            except MigoptError as err:
                self._report_once("configmap", f"owned mig-parted config is invalid: {err}")
                parsed = None
            self._parsed = (text, parsed)
        return self._parsed[1]

    def _report_checks(
        self, name: str, raw: Mapping[str, Any], allocatable: dict[str, int], now: float
    ) -> ReportChecks:
        """What the node's report is verified against: this process's wall clock, the node's GPU resources, and
        when they were last seen to change (None: not since this process started watching)."""
        capacity = node_allocatable({"status": {"allocatable": (raw.get("status") or {}).get("capacity")}})
        resources = (sorted(allocatable.items()), sorted(capacity.items()))
        seen = self._advertised.get(name)
        since = None if seen is None else seen[1] if seen[0] == resources else now
        self._advertised[name] = (resources, since)
        s = self.settings
        return ReportChecks(
            now=now,
            max_age_s=s.report_max_age_s,
            max_skew_s=s.report_max_skew_s,
            allocatable=allocatable,
            capacity=capacity,
            advertised_since=since,
        )

    def _report_rejection(self, name: str, rejected: list[ReportRejected]) -> None:
        """A node's report starting to fail a check (or another one): one log line, one Event on the node, one
        count. While it keeps failing for the same reason, nothing more; once it passes, the next failure counts."""
        if not rejected:
            self._rejected.pop(name, None)
            return
        rejection = rejected[0]
        if self._rejected.get(name) == rejection.reason:
            return
        self._rejected[name] = rejection.reason
        log.warning("node=%s report_rejected reason=%s: %s; falling back to the next source", name,
                    rejection.reason, rejection)  # fmt: skip
        self.events.record("Node", name, EventReason.REPORT_REJECTED, f"{rejection}; using the next source")
        if self._on_report_rejected is not None:
            self._on_report_rejected(name, str(rejection.reason))

    def _report_once(self, subject: str, message: str) -> None:
        if (subject, message) not in self._reported:
            self._reported.add((subject, message))
            log.warning("node=%s not planned: %s", subject, message)

    def _note_dra(self, node: str, note: str) -> None:
        if (node, note) not in self._dra_noted:
            self._dra_noted.add((node, note))
            log.info("node=%s dra: %s", node, note)

    def _report_dra_skipped(self, skipped: dict[str, str]) -> None:
        """A slice or claim that starts to be unreadable (or for another reason): one log line, one count."""
        for key, reason in sorted(skipped.items()):
            if self.dra_skipped.get(key) != reason:
                resource = key.partition("/")[0]
                log.warning("%s skipped: %s", key, reason)
                self.dra_skipped_total[resource] += 1
                if self._on_dra_skipped is not None:
                    self._on_dra_skipped(resource, reason)
        self.dra_skipped = skipped

    def _report_skipped(self, skipped: dict[str, str]) -> None:
        for pod, reason in skipped.items():
            if self.skipped_pods.get(pod) != reason:
                log.warning("pod=%s skipped: %s", pod, reason)
                self.events.record("Pod", pod, EventReason.INVALID_REQUEST, reason)
        self.skipped_pods = skipped

    def read_mig_config(self) -> str | None:
        cm = self.configmaps.get(f"{self.settings.mig_config_namespace}/{self.settings.mig_config_name}")
        if cm is None:
            return None
        value = (cm.get("data") or {}).get(self.settings.mig_config_key)
        return None if value is None else str(value)

    # ---- ClusterPort: writing -------------------------------------------------------------------------

    def patch_node(
        self, node: str, *, labels: Mapping[str, str | None] = {}, annotations: Mapping[str, str | None] = {}
    ) -> None:
        metadata: dict[str, Any] = {}
        if labels:
            metadata["labels"] = dict(labels)
        if annotations:
            metadata["annotations"] = dict(annotations)
        if metadata:
            self._patch_node(node, {"metadata": metadata})

    def set_unschedulable(self, node: str, unschedulable: bool) -> None:
        self._patch_node(node, {"spec": {"unschedulable": unschedulable or None}})

    def _patch_node(self, node: str, body: dict[str, Any]) -> None:
        """A JSON merge patch: labels and annotations merge key by key, null removes; no resourceVersion, so no
        conflicts with GFD or mig-manager writing other labels of the same node."""
        patched = self.caller("patch", "nodes", lambda: self.api.patch_node(node, body), idempotent=True)
        self.nodes.apply(patched)

    def evict(self, pod: str, uid: str | None = None) -> EvictionOutcome:
        """policy/v1 Eviction: 201 evicted, 429 a budget refuses (nothing happened; ask again later), 404 gone,
        409 on the UID precondition (the name now belongs to another pod: the one meant is gone)."""
        namespace, _, name = pod.rpartition("/")
        try:
            self.caller(
                "create",
                "pods/eviction",
                lambda: self.api.evict(name, namespace or "default", uid),
                allow=(404, 409, 429),
                idempotent=True,
            )
        except (NotFound, Conflict):
            return EvictionOutcome.GONE
        except TooManyRequests:  # allowed: not retried here; the controller asks again on a later pass
            return EvictionOutcome.BLOCKED
        return EvictionOutcome.EVICTED

    def write_mig_config(self, text: str) -> None:
        """Create or update the owned ConfigMap's key, keeping its other keys; a 409 re-reads and retries."""
        s = self.settings
        self._write_key(self.configmaps, s.mig_config_namespace, s.mig_config_name, s.mig_config_key, text)

    def read_records(self) -> dict[str, str]:
        cm = self.records.get(f"{self.settings.records_namespace}/{self.settings.records_name}")
        return {str(k): str(v) for k, v in ((cm or {}).get("data") or {}).items()}

    def write_record(self, node: str, text: str | None) -> None:
        s = self.settings
        self._write_key(self.records, s.records_namespace, s.records_name, node, text)

    def _write_key(self, informer: Informer, namespace: str, name: str, key: str, text: str | None) -> None:
        """Set (None: remove) one key of a ConfigMap migopt owns, keeping the others: a read, then a create or a
        resourceVersion-guarded update; a 409 reads again and retries. The cache sees the write at once."""
        for _ in range(5):
            current = self.caller.read_or_none("configmaps", partial(self.api.read_config_map, name, namespace))
            data = {**((current or {}).get("data") or {}), key: text}
            data = {k: v for k, v in data.items() if v is not None}
            if current is None:
                body: dict[str, Any] = {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "labels": {"app.kubernetes.io/managed-by": "migopt"},
                    },
                    "data": data,
                }
                call = partial(self.api.create_config_map, namespace, body)
                verb = "create"
            else:
                body = {**current, "data": data}
                call = partial(self.api.replace_config_map, name, namespace, body)
                verb = "update"
            try:
                written = self.caller(verb, "configmaps", call, allow=(409,))
            except Conflict:
                continue  # someone else wrote it first: read again
            informer.apply(written)
            return
        raise Conflict(
            f"configmap {namespace}/{name}: conflicts kept winning", status=409, verb="update", resource="configmaps"
        )

    def record_event(self, kind: Literal["Pod", "Node"], name: str, reason: EventReason, message: str) -> None:
        self.events.record(kind, name, reason, message)

    def now(self) -> float:
        return time.time()


def _agent_report(annotations: Mapping[str, str], node: str) -> NodeGpuReport | None:
    """The node agent's report, for its GPUs' UUIDs; None without one that parses and describes GPUs."""
    text = annotations.get(GPU_REPORT_ANNOTATION)
    try:
        report = report_from_annotation(text, node) if text else None
    except MigoptError:
        return None
    return report if report is not None and report.error is None else None


def _held_through_claim(found: RunningPod | None, holder: RunningPod) -> RunningPod:
    """A pod holding devices through a ResourceClaim: never evicted by migopt, whatever else is known of it. A
    reason declared before `dra-claim` (a DaemonSet's pod, a mirror pod) is kept: one reason per pod, the first."""
    if found is None:
        return holder
    order = list(Protection)
    if found.protection is not None and order.index(found.protection) < order.index(Protection.DRA_CLAIM):
        return found
    return RunningPod(name=found.name, priority=found.priority, uid=found.uid or holder.uid,
                      protection=Protection.DRA_CLAIM)  # fmt: skip


def _conforms(port: KubeClusterPort) -> ClusterPort:
    """Static check (mypy) that the adapter implements the controller's port."""
    return port
