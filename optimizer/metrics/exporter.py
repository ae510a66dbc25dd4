"""Recommendations out: the controller's view as Prometheus metrics (`migopt_*`), for Grafana and alerts.

`MetricsObserver` is the controller's `ControllerObserver`. What describes the latest snapshot or plan (pending
demand, geometry, phases, the plan's figures, right-sizing) is rebuilt whole on each call and served by one
collector from an immutable table, so a scrape never sees half an update and a node that disappears takes its
series with it. What accumulates (plans, evictions, reconfigurations, events) is counters whose label values
are created up front, so every series exists from the first scrape and `rate()` never starts from nothing.
Cardinality: per node and GPU (geometry, phases), per profile (demand), per recommendation (capped).
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.registry import Collector

from nvidia_protocol.labels import MIG_CONFIG_LABEL, MIG_STATE_LABEL
from optimizer.actuators.wedges import paused_operands
from optimizer.controller.actuator import ActuationStatus, Phase
from optimizer.controller.isolation import Isolation
from optimizer.controller.reasons import EventReason
from optimizer.kube.layouts import RejectReason
from optimizer.metrics.http_serve import Response, RunningServer, serve_routes
from optimizer.usage.rightsizing import Recommendation
from solver.errors import MigoptError
from solver.plan import Plan, PlanStatus
from solver.protection import Protection
from solver.snapshot import ClusterSnapshot, PendingPod, split_single_product

disable_created_metrics()  # type: ignore[no-untyped-call]  # `*_created` series double the exposition and no dashboard or alert reads them

Labels = tuple[str, ...]
Series = list[tuple[Labels, float]]

# name -> (help, label names): every gauge the state collector serves
_GAUGES: dict[str, tuple[str, Labels]] = {
    "migopt_pending_pods": ("Pending pods with a MIG request in the latest snapshot.", ()),
    "migopt_protected_pods": (
        "Running GPU pods in the latest snapshot that may never be evicted, by reason.",
        ("reason",),
    ),
    "migopt_pending_demand_devices": ("MIG devices pending pods ask for, by profile.", ("profile",)),
    "migopt_gpu_geometry_info": (
        "A GPU's MIG devices map (devices label, profile=count), current or as the last plan wants it.",
        ("node", "gpu", "model", "state", "devices"),
    ),
    "migopt_node_config_info": (
        "A node's nvidia.com/mig.config: current label, or the config the last plan would select.",
        ("node", "state", "config"),
    ),
    "migopt_node_instances": (
        "MIG instances on a node by profile, current or as the last plan wants them.",
        ("node", "profile", "state"),
    ),
    "migopt_nodes": ("Nodes with MIG GPUs in the latest snapshot.", ()),
    "migopt_node_actuation_phase": (
        "1 for the node's current actuation phase (as its actuator records it), 0 for the others.",
        ("node", "phase"),
    ),
    "migopt_nodes_actuating": ("Nodes in the middle of a MIG change.", ()),
    "migopt_node_quarantined_until_seconds": (
        "For a node whose last MIG change failed: until when (cluster clock) new plans leave it alone.",
        ("node",),
    ),
    "migopt_nodes_quarantined": ("Nodes left out of planning after a failed MIG change.", ()),
    "migopt_node_mig_config_failed": (
        "1 when mig-manager reports nvidia.com/mig.config.state=failed on the node.",
        ("node",),
    ),
    "migopt_mig_config_failed_nodes": ("Nodes whose mig-manager reports failed.", ()),
    "migopt_node_operands_paused": (
        "1 while some nvidia.com/gpu.deploy.* label of the node is paused-for-mig-change (normal during a run; "
        "after it, mig-manager left the operands down).",
        ("node",),
    ),
    "migopt_plan_pods_served": ("Pending pods the last plan would serve.", ()),
    "migopt_plan_pods_unplaced": ("Pending pods the last plan leaves pending.", ()),
    "migopt_plan_served_weight": ("Priority-weighted compute slices the last plan serves (its objective).", ()),
    "migopt_plan_evictions": ("Pods the last plan evicts.", ()),
    "migopt_plan_reconfigurations": ("GPUs the last plan reconfigures.", ()),
    "migopt_plan_touched_nodes": ("Nodes the last plan changes.", ()),
    "migopt_plan_forecast_reconfigurations": (
        "GPUs the last plan reshapes for forecast demand, not a pending pod (proactive policy).",
        (),
    ),
    "migopt_forecast_pods": (
        "Pods of each request shape the proactive policy expects over its lead time.",
        ("request",),
    ),
    "migopt_plan_fragmentation_slices": ("Free compute slices no pending request could use, after the last plan.", ()),
    "migopt_plan_timestamp_seconds": ("Cluster time of the last plan.", ()),
    "migopt_snapshot_timestamp_seconds": ("Cluster time of the latest snapshot.", ()),
    "migopt_solver_info": ("1 for the last plan's solver status and policy.", ("status", "policy")),
    "migopt_solver_last_duration_seconds": ("Wall time of the last plan's solve.", ()),
    "migopt_solver_objective": ("The last plan's objective (priority-weighted served slices).", ()),
    "migopt_solver_bound": ("The proven upper bound on the last plan's objective.", ()),
    "migopt_solver_gap_ratio": ("(bound - objective) / bound of the last plan.", ()),
    "migopt_rightsizing_freeable_slices": (
        "Compute slices a pod's device would free at the recommended profile (capped list, most first).",
        ("namespace", "pod", "node", "gpu", "current_profile", "recommended_profile"),
    ),
    "migopt_rightsizing_recommendations": ("Confident right-sizing recommendations that free slices (uncapped).", ()),
    "migopt_rightsizing_total_freeable_slices": ("Compute slices all those recommendations would free.", ()),
    "migopt_rightsizing_omitted": ("Recommendations left out of the per-pod series by the cap.", ()),
    "migopt_usage_available": ("1 when the last usage query round reached Prometheus, else 0.", ()),
    "migopt_leader": ("1 when this replica holds the leader lease and may act.", ()),
}

STATUSES: tuple[PlanStatus, ...] = tuple(PlanStatus)
REASONS = tuple(r for r in EventReason if r not in (EventReason.INVALID_REQUEST, EventReason.REPORT_REJECTED))
"""The reasons the controller records through its port (a malformed request or a rejected node report is
reported by the adapter)."""
RECONFIGURATION_OUTCOMES = {
    EventReason.RECONFIGURATION_STARTED: "started",
    EventReason.RECONFIGURED: "succeeded",
    EventReason.RECONFIGURATION_FAILED: "failed",
    EventReason.RECONFIGURATION_RETRY: "retried",
    EventReason.RECONFIGURATION_ABANDONED: "abandoned",
}
EVICTION_OUTCOMES = {EventReason.EVICTED: "evicted", EventReason.EVICTION_BLOCKED: "blocked"}
PASS_RESULTS = ("ok", "failed")
WEDGE_KINDS = {EventReason.OPERANDS_LEFT_PAUSED: "operands_left_paused", EventReason.RUN_TIMED_OUT: "pending_timed_out"}
REPAIR_ACTIONS = {EventReason.OPERANDS_RESTORED: "restored", EventReason.RUN_RETRIGGERED: "retriggered"}


class _StateCollector(Collector):
    """Serves the gauges from one immutable table that the observer swaps whole."""

    def __init__(self) -> None:
        self.table: dict[str, Series] = {name: [] for name in _GAUGES}
        self.lock = threading.Lock()

    def update(self, changes: dict[str, Series]) -> None:
        with self.lock:
            self.table = {**self.table, **changes}

    def collect(self) -> Iterable[Metric]:
        table = self.table
        for name, (text, labels) in _GAUGES.items():
            family = GaugeMetricFamily(name, text, labels=list(labels))
            for values, value in table.get(name, []):
                family.add_metric(list(values), value)
            yield family


def devices_text(devices: dict[str, int]) -> str:
    """A mig-devices map as one label value: `1g.10gb=2,3g.40gb=1` (sorted by slices, then name)."""
    return ",".join(f"{p}={c}" for p, c in sorted(devices.items(), key=lambda kv: (_slices(kv[0]), kv[0])) if c)


def _slices(profile: str) -> int:
    head = profile.split(".", 1)[0]
    return int(head[:-1]) if head.endswith("g") and head[:-1].isdigit() else 0


def pod_profiles(pod: PendingPod) -> dict[str, int]:
    """A pending pod's request as profile → devices (mixed requests, or the single strategy's product)."""
    if pod.single_product is not None:
        try:
            _, profile = split_single_product(pod.single_product)
        except MigoptError:
            return {}
        return {profile: pod.requests.get("nvidia.com/gpu", 0)}
    return pod.mig_requests


def protected_series(snapshot: ClusterSnapshot) -> Series:
    """Running pods with a `Protection`, one series per reason (zeros included, so every series always exists);
    pods kept only by the plan policy's priority floor are not counted: that is the policy's, not the pod's."""
    counts = Tally(p.protection for p in snapshot.running if p.protection is not None)
    return [((reason.value,), float(counts[reason])) for reason in Protection]


class MetricsObserver:
    """The metrics exporter: a `ControllerObserver` with its own registry (`registry`), plus the setters the
    runner calls for what the controller does not see (usage availability, right-sizing, leadership)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, rightsizing_cap: int = 50) -> None:
        self.registry = registry or CollectorRegistry()
        self.rightsizing_cap = rightsizing_cap
        self._state = _StateCollector()
        self.registry.register(self._state)
        if registry is None:  # the process's own CPU, memory, open files and Python runtime, as a client library's
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._lock = threading.Lock()
        self._current: dict[tuple[str, int], tuple[str, dict[str, int]]] = {}
        self._snapshot: ClusterSnapshot | None = None
        self._plan: Plan | None = None
        self._targets: dict[str, str] = {}
        self._current_series: tuple[Series, Series, Series] = ([], [], [])
        r = self.registry
        self.plans = Counter("migopt_plans", "Plans made, by solver status.", ["status"], registry=r)
        self.planned_evictions = Counter("migopt_planned_evictions", "Evictions named by plans.", registry=r)
        self.planned_reconfigurations = Counter(
            "migopt_planned_reconfigurations", "GPU reconfigurations named by plans.", registry=r
        )
        self.evictions = Counter("migopt_evictions", "Eviction requests by outcome.", ["outcome"], registry=r)
        self.reconfigurations = Counter(
            "migopt_reconfigurations", "Node MIG changes by outcome.", ["outcome"], registry=r
        )
        self.events = Counter("migopt_events", "Kubernetes Events the controller recorded.", ["reason"], registry=r)
        self.usage_failures = Counter("migopt_usage_query_failures", "Usage query rounds that failed.", registry=r)
        self.wedges = Counter(
            "migopt_mig_manager_wedges",
            "Nodes found left broken by a mig-manager run, by kind: operands_left_paused (state success or failed, "
            "deploy labels still paused), pending_timed_out (the run ended without a state).",
            ["kind"],
            registry=r,
        )
        self.repairs = Counter(
            "migopt_mig_manager_repairs",
            "Repairs on nodes migopt changed: restored (paused deploy labels written back), retriggered (the config "
            "label removed and set again after a timed-out run).",
            ["action"],
            registry=r,
        )
        self.passes = Counter(
            "migopt_reconcile_passes", "Reconcile passes by result: ok or failed.", ["result"], registry=r
        )
        self.dra_skipped = Counter(
            "migopt_dra_objects_skipped",
            "ResourceClaims and ResourceSlices the adapter could not read (each counted once per reason).",
            ["resource"],
            registry=r,
        )
        self.reports_rejected = Counter(
            "migopt_layout_source_rejected",
            "Node agent reports not trusted, by the check they failed; counted when a node's report starts "
            "failing it (the node then uses the next source).",
            ["reason"],
            registry=r,
        )
        self.solve_seconds = Histogram(
            "migopt_solver_duration_seconds", "Wall time of each solve.", registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )  # fmt: skip
        for status in STATUSES:
            self.plans.labels(status)
        for outcome in EVICTION_OUTCOMES.values():
            self.evictions.labels(outcome)
        for outcome in RECONFIGURATION_OUTCOMES.values():
            self.reconfigurations.labels(outcome)
        for reason in REASONS:
            self.events.labels(reason)
        for result in PASS_RESULTS:
            self.passes.labels(result)
        for kind in WEDGE_KINDS.values():
            self.wedges.labels(kind)
        for action in REPAIR_ACTIONS.values():
            self.repairs.labels(action)
        for rejected in RejectReason:
            self.reports_rejected.labels(rejected)
        self._state.update({"migopt_usage_available": [((), 0.0)], "migopt_leader": [((), 0.0)]})

    # ---- ControllerObserver -----------------------------------------------------------------------------

    def snapshot_taken(self, snapshot: ClusterSnapshot, now: float, statuses: Mapping[str, ActuationStatus]) -> None:
        demand: Tally[str] = Tally()
        for pod in snapshot.pods:
            demand.update(pod_profiles(pod))
        geometry: Series = []
        configs: Series = []
        instances: Series = []
        phases: Series = []
        failed: Series = []
        paused: Series = []
        current: dict[tuple[str, int], tuple[str, dict[str, int]]] = {}
        for node in snapshot.nodes:
            if not node.gpus:
                continue
            counts: Tally[str] = Tally()
            for gpu in node.gpus:
                devices = gpu.mig_devices
                current[(node.name, gpu.index)] = (gpu.gpu_model.key, devices)
                counts.update(devices)
                geometry.append(((node.name, str(gpu.index), gpu.gpu_model.key, "current", devices_text(devices)), 1))
            instances += [((node.name, p, "current"), float(c)) for p, c in sorted(counts.items())]
            configs.append(((node.name, "current", node.labels.get(MIG_CONFIG_LABEL, "")), 1))
            status = statuses.get(node.name)
            if status is not None:
                phases += [((node.name, p.value), float(p is status.phase)) for p in Phase]
            if MIG_STATE_LABEL in node.labels:
                failed.append(((node.name,), float(node.labels[MIG_STATE_LABEL] == "failed")))
            paused.append(((node.name,), float(bool(paused_operands(node.labels)))))
        with self._lock:
            self._current, self._snapshot = current, snapshot
            self._current_series = (geometry, configs, instances)
            planned = self._planned_series()
        actuating = sum(1 for s in statuses.values() if s.active)
        self._state.update(
            {
                "migopt_pending_pods": [((), float(len(snapshot.pods)))],
                "migopt_protected_pods": protected_series(snapshot),
                "migopt_pending_demand_devices": [((p,), float(c)) for p, c in sorted(demand.items())],
                "migopt_nodes": [((), float(len({n for n, _ in current})))],
                "migopt_node_actuation_phase": phases,
                "migopt_nodes_actuating": [((), float(actuating))],
                "migopt_node_mig_config_failed": failed,
                "migopt_mig_config_failed_nodes": [((), sum(v for _, v in failed))],
                "migopt_node_operands_paused": paused,
                "migopt_snapshot_timestamp_seconds": [((), now)],
                "migopt_gpu_geometry_info": geometry + planned["geometry"],
                "migopt_node_config_info": configs + planned["configs"],
                "migopt_node_instances": instances + planned["instances"],
            }
        )

    def plan_made(self, plan: Plan, snapshot: ClusterSnapshot, plan_id: str, targets: Mapping[str, str]) -> None:
        o = plan.objectives
        self.plans.labels(plan.status).inc()
        self.planned_evictions.inc(len(plan.evictions))
        self.planned_reconfigurations.inc(sum(1 for g in plan.gpus if g.reconfigure))
        self.solve_seconds.observe(plan.solve_seconds)
        with self._lock:
            self._plan = plan
            self._targets = dict(targets)
            self._snapshot = snapshot
            planned = self._planned_series()
            geometry, configs, instances = self._current_series
        self._state.update(
            {
                "migopt_plan_pods_served": [((), float(o.served_pods))],
                "migopt_plan_pods_unplaced": [((), float(len(plan.unplaced)))],
                "migopt_plan_served_weight": [((), float(o.served_weight))],
                "migopt_plan_evictions": [((), float(o.evicted_pods))],
                "migopt_plan_reconfigurations": [((), float(o.reconfigured_gpus))],
                "migopt_plan_touched_nodes": [((), float(o.touched_nodes))],
                "migopt_plan_forecast_reconfigurations": [((), float(sum(g.forecast for g in plan.gpus)))],
                "migopt_forecast_pods": [
                    ((",".join(f"{r}={c}" for r, c in sorted(d.requests.items())),), float(d.count))
                    for d in snapshot.forecast
                ],
                "migopt_plan_fragmentation_slices": [((), float(o.fragmentation))],
                "migopt_solver_info": [((plan.status, plan.policy), 1.0)],
                "migopt_solver_last_duration_seconds": [((), plan.solve_seconds)],
                "migopt_solver_objective": [((), float(plan.objective))],
                "migopt_solver_bound": [((), float(plan.bound))],
                "migopt_solver_gap_ratio": [((), plan.gap)],
                "migopt_gpu_geometry_info": geometry + planned["geometry"],
                "migopt_node_config_info": configs + planned["configs"],
                "migopt_node_instances": instances + planned["instances"],
            }
        )

    def isolation_changed(self, held: Isolation) -> None:
        quarantined = sorted(held.quarantined.items())
        self._state.update(
            {
                "migopt_node_quarantined_until_seconds": [((node,), until) for node, until in quarantined],
                "migopt_nodes_quarantined": [((), float(len(quarantined)))],
            }
        )

    def event_recorded(self, kind: Literal["Pod", "Node"], name: str, reason: EventReason, message: str) -> None:
        self.events.labels(reason).inc()
        if reason in EVICTION_OUTCOMES:
            self.evictions.labels(EVICTION_OUTCOMES[reason]).inc()
        elif reason in RECONFIGURATION_OUTCOMES:
            self.reconfigurations.labels(RECONFIGURATION_OUTCOMES[reason]).inc()
        elif reason in WEDGE_KINDS:
            self.wedges.labels(WEDGE_KINDS[reason]).inc()
        elif reason in REPAIR_ACTIONS:
            self.repairs.labels(REPAIR_ACTIONS[reason]).inc()

    # ---- what the runner sets ---------------------------------------------------------------------------

    def usage_status(self, available: bool, reason: str | None = None) -> None:
        """The usage port's listener (`PrometheusUsage(on_status=...)`)."""
        if not available:
            self.usage_failures.inc()
        self._state.update({"migopt_usage_available": [((), float(available))]})

    def report_rejected(self, node: str, reason: str) -> None:
        """The Kubernetes adapter's listener (`KubeClusterPort(on_report_rejected=...)`)."""
        self.reports_rejected.labels(reason).inc()

    def dra_object_skipped(self, resource: str, reason: str) -> None:
        """The Kubernetes adapter's listener (`KubeClusterPort(on_dra_skipped=...)`)."""
        self.dra_skipped.labels(resource).inc()

    def pass_finished(self, ok: bool) -> None:
        """The runner's reconcile pass ended: `ok`, or failed (an exception it logged)."""
        self.passes.labels(PASS_RESULTS[0] if ok else PASS_RESULTS[1]).inc()

    def set_leader(self, leader: bool) -> None:
        self._state.update({"migopt_leader": [((), float(leader))]})

    def rightsizing_updated(self, recommendations: list[Recommendation]) -> None:
        """Publish the confident recommendations that free slices, most first, at most `rightsizing_cap`."""
        useful = sorted(
            (r for r in recommendations if r.confident and r.slices_freed > 0),
            key=lambda r: (-r.slices_freed, r.pod, r.node, r.gpu, r.gi),
        )
        shown = useful[: self.rightsizing_cap]
        series: Series = [
            ((r.namespace, r.name, r.node, str(r.gpu), r.current_profile, r.recommended_profile), float(r.slices_freed))
            for r in shown
        ]
        self._state.update(
            {
                "migopt_rightsizing_freeable_slices": series,
                "migopt_rightsizing_recommendations": [((), float(len(useful)))],
                "migopt_rightsizing_total_freeable_slices": [((), float(sum(r.slices_freed for r in useful)))],
                "migopt_rightsizing_omitted": [((), float(len(useful) - len(shown)))],
            }
        )

    # ---- internals --------------------------------------------------------------------------------------

    def _planned_series(self) -> dict[str, Series]:
        """The last plan's changes: the planned map of each GPU it reconfigures, and the instances and config of
        each node it changes (a GPU or node it leaves alone would only repeat its current series)."""
        plan = self._plan
        out: dict[str, Series] = {"geometry": [], "configs": [], "instances": []}
        if plan is None or self._snapshot is None:
            return out
        targets = {(g.node, g.index): g for g in plan.gpus}
        changing = {g.node for g in plan.gpus if g.reconfigure}
        by_node: dict[str, list[tuple[int, str, dict[str, int]]]] = {}
        for (node, index), (model, devices) in sorted(self._current.items()):
            if node not in changing:  # a node the plan leaves alone has no planned series: its current ones tell
                continue
            gpu_plan = targets.get((node, index))
            target = dict(gpu_plan.target) if gpu_plan is not None else devices
            by_node.setdefault(node, []).append((index, model, target))
            if gpu_plan is not None and gpu_plan.reconfigure:
                out["geometry"].append(((node, str(index), model, "planned", devices_text(target)), 1.0))
        labels = {n.name: n.labels.get(MIG_CONFIG_LABEL, "") for n in self._snapshot.nodes}
        for node, gpus in by_node.items():
            counts: Tally[str] = Tally()
            for _, _, target in gpus:
                counts.update(target)
            out["instances"] += [((node, p, "planned"), float(c)) for p, c in sorted(counts.items()) if c]
            config = self._targets.get(node, labels.get(node, ""))
            out["configs"].append(((node, "planned", config), 1.0))
        return out

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def serve_http(
    port: int,
    registry: CollectorRegistry,
    *,
    healthy: Callable[[], bool],
    ready: Callable[[], bool],
    host: str = "127.0.0.1",
) -> RunningServer:
    """`/metrics` (the registry), `/healthz` (liveness: the loop is alive) and `/readyz` (readiness: e.g. it
    has taken a snapshot), each 200 or 503; 0 picks a free port. Stop it with `.stop()`."""

    def probe(check: Callable[[], bool]) -> Callable[[Mapping[str, str]], Response]:
        def answer(headers: Mapping[str, str]) -> Response:
            ok = check()
            return (200 if ok else 503), "text/plain; charset=utf-8", b"ok\n" if ok else b"not ok\n"

        return answer

    def metrics(headers: Mapping[str, str]) -> Response:
        """prometheus_client's own exposition: OpenMetrics when the scraper asks for it, else text 0.0.4."""
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        return 200, content_type, encoder(registry)

    return serve_routes(port, {"/metrics": metrics, "/healthz": probe(healthy), "/readyz": probe(ready)}, host=host)
