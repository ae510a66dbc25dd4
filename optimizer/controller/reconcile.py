"""The reconcile loop: observe, batch pending pods, plan, and (in `enforce` mode) act node by node.

One `tick` is one pass; the runner (the Deployment's main loop, or the simulation engine) calls it every few
seconds. Nothing here is specific to a real cluster or the twin: both are a `ClusterPort`.

- Actuation first: every node mid-change is advanced one step. While any is, no new plan is made (the plan
  barrier), so plans never race each other or a half-done change.
- Batching: a window opens with the first pending pod and closes after `batch_idle_s` without new pending
  pods or `batch_timeout_s` after it opened, so a burst of pods is planned together.
- A new plan is made only when the pending pods or the cluster's layouts changed since the last one.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from nvidia_protocol.labels import MIG_CONFIG_LABEL
from nvidia_protocol.migparted import (
    MigPartedConfig,
    config_name,
    empty_config,
    garbage_collect,
    node_entry,
    parse_config,
    render_config,
    with_entry,
)
from nvidia_protocol.standard_configs import standard_config
from optimizer.actuators.mig_manager import ActuationSettings, NodeChange, advance, is_active, start
from optimizer.controller.observer import ControllerObserver, ObservedPort
from optimizer.controller.port import ClusterPort
from solver.errors import MigoptError
from solver.plan import GpuPlan, Plan, PlanPolicy
from solver.planner import make_plan
from solver.profiles import resource_name
from solver.snapshot import GPU_RESOURCE, ClusterSnapshot, NodeState

log = logging.getLogger(__name__)


class ControllerSettings(BaseModel):
    mode: Literal["recommend", "enforce"] = "recommend"
    planner: Literal["optimal", "greedy"] = "optimal"
    batch_idle_s: float = Field(default=10.0, ge=0)
    batch_timeout_s: float = Field(default=60.0, ge=0)
    policy: PlanPolicy = PlanPolicy()
    actuation: ActuationSettings = ActuationSettings()


class Controller:
    """The reconcile loop's state between ticks: the batch window and what the last plan was made for."""

    def __init__(
        self,
        port: ClusterPort,
        settings: ControllerSettings | None = None,
        *,
        observer: ControllerObserver | None = None,
        may_act: Callable[[], bool] = lambda: True,
    ) -> None:
        """`observer` sees every snapshot, plan and event (the metrics exporter); `may_act` is asked before every
        step that changes the cluster (leader election: a replica that lost its lease stops at the next step)."""
        self.observer = observer
        self.port: ClusterPort = ObservedPort(port, observer) if observer else port
        self.may_act = may_act
        self.settings = settings or ControllerSettings()
        self.last_plan: Plan | None = None
        self.plans_made = 0
        self._window_opened: float | None = None
        self._last_arrival = 0.0
        self._seen: set[str] = set()
        self._planned_for: tuple[frozenset[str], tuple[tuple[str, str], ...]] | None = None

    def tick(self) -> Plan | None:
        """One reconcile pass; returns the plan made in this pass, if any."""
        if not self.may_act():
            return None
        snapshot = self.port.snapshot()
        if self.observer:
            self.observer.snapshot_taken(snapshot, self.port.now())
        active = [n for n in snapshot.nodes if is_active(n)]
        for node in active:
            if not self.may_act():
                return None
            advance(self.port, node, self.settings.actuation)
        if active:
            return None  # plan barrier
        if not self._window_closed(snapshot):
            return None
        situation = (frozenset(p.name for p in snapshot.pods), _layouts(snapshot))
        if situation == self._planned_for:
            return None
        self._planned_for = situation
        plan = make_plan(snapshot, self.settings.policy, self.settings.planner)
        self.plans_made += 1
        self.last_plan = plan
        plan_id = f"plan-{self.plans_made}"
        self._publish(plan, plan_id)
        if self.observer:
            self.observer.plan_made(plan, snapshot, plan_id)
        if self.settings.mode == "enforce" and self.may_act():
            try:
                self._enact(snapshot, plan, plan_id)
            except Exception:
                self._planned_for = None  # not carried out: the next pass plans again
                raise
        return plan

    def _window_closed(self, snapshot: ClusterSnapshot) -> bool:
        now = self.port.now()
        pending = {p.name for p in snapshot.pods}
        if not pending:
            self._window_opened, self._seen = None, set()
            return False
        if self._window_opened is None:
            self._window_opened, self._last_arrival = now, now
        if pending - self._seen:
            self._seen |= pending
            self._last_arrival = now
        idle = now - self._last_arrival >= self.settings.batch_idle_s
        timed_out = now - self._window_opened >= self.settings.batch_timeout_s
        if idle or timed_out:
            self._window_opened, self._seen = None, set()
            return True
        return False

    def _publish(self, plan: Plan, plan_id: str) -> None:
        for placement in plan.placements:
            self.port.record_event("Pod", placement.pod, "MigPlanned", f"{plan_id} serves it on {placement.node}")
        for unplaced in plan.unplaced:
            self.port.record_event("Pod", unplaced.pod, "MigUnplaced", unplaced.reason)
        o = plan.objectives
        log.info(
            "plan=%s status=%s served=%d unplaced=%d evictions=%d reconfigurations=%d",
            plan_id, plan.status, o.served_pods, len(plan.unplaced), o.evicted_pods, o.reconfigured_gpus,
        )  # fmt: skip

    def _enact(self, snapshot: ClusterSnapshot, plan: Plan, plan_id: str) -> None:
        """Write the config entries the changing nodes need, then start each node's change."""
        by_node: dict[str, list[GpuPlan]] = {}
        for gpu in plan.gpus:
            by_node.setdefault(gpu.node, []).append(gpu)
        nodes = {n.name: n for n in snapshot.nodes}
        changes = []
        config = self._read_config()
        existing = set(config.mig_configs)  # entries mig-manager may already have; new ones need time to reach it
        for name, gpus in sorted(by_node.items()):
            if not any(g.reconfigure for g in gpus):
                continue
            node = nodes[name]
            models = {g.index: g.gpu_model for g in node.gpus}
            entries = node_entry([(g.index, models[g.index], g.target) for g in sorted(gpus, key=lambda g: g.index)])
            label = config_name(entries)
            new_entry = label not in existing
            config = with_entry(config, label, entries)
            evict = sorted({pod for g in gpus for pod in g.evict})
            changes.append(
                NodeChange(
                    node=name,
                    plan_id=plan_id,
                    config_name=label,
                    evict=evict,
                    expected=_expected(node, gpus),
                    new_entry=new_entry,
                )
            )
        if not changes:
            return
        in_use = {n.labels[MIG_CONFIG_LABEL] for n in snapshot.nodes if MIG_CONFIG_LABEL in n.labels}
        config = _restore_standard_names(config, in_use, snapshot)
        config = garbage_collect(config, in_use | {c.config_name for c in changes})
        self.port.write_mig_config(render_config(config))  # before any label names an entry
        for change in changes:
            if not self.may_act():
                return
            start(self.port, change, self.settings.actuation)

    def _read_config(self) -> MigPartedConfig:
        text = self.port.read_mig_config()
        if text is None:
            return empty_config()
        try:
            return parse_config(text)
        except MigoptError as err:
            log.warning("owned mig-parted config is invalid, rewriting it: %s", err)
            return empty_config()


def _restore_standard_names(config: MigPartedConfig, in_use: set[str], snapshot: ClusterSnapshot) -> MigPartedConfig:
    """Nodes may be labelled with the operator's standard names (`all-1g.10gb`…): an entry for each must stay in
    the file, or a mig-manager restart on such a node fails. Put back any that are missing (a ConfigMap found
    broken and rewritten, or one that never had them), built for the cluster's GPU models."""
    missing = in_use - set(config.mig_configs)
    if not missing:
        return config
    models = sorted({g.gpu_model.key: g.gpu_model for n in snapshot.nodes for g in n.gpus}.items())
    standard = standard_config([m for _, m in models]).mig_configs if models else {}
    for name in sorted(missing & set(standard)):
        config = with_entry(config, name, standard[name])
    return config


def _layouts(snapshot: ClusterSnapshot) -> tuple[tuple[str, str], ...]:
    """What the cluster's MIG layouts are, compactly: a change here warrants a new plan."""
    return tuple(
        (f"{n.name}/{g.index}", ",".join(f"{i.profile}@{i.start}:{i.pod or ''}" for i in g.instances))
        for n in sorted(snapshot.nodes, key=lambda n: n.name)
        for g in n.gpus
    )


def _expected(node: NodeState, gpus: list[GpuPlan]) -> dict[str, int]:
    """The MIG resources the node must advertise once every GPU has its target map."""
    counts: Counter[str] = Counter()
    for gpu in gpus:
        for profile, count in gpu.target.items():
            counts[resource_name(profile) if node.strategy == "mixed" else GPU_RESOURCE] += count
    return dict(counts)
