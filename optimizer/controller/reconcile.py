"""The reconcile loop: observe, batch pending pods, plan, and (in `enforce` mode) act node by node.

One `tick` is one pass; the runner (the Deployment's main loop, or the simulation engine) calls it every few
seconds. Nothing here is specific to a real cluster or the twin: both are a `ClusterPort`.

- Actuation first: the actuator looks after every node (reports what mig-manager left broken, repairs it on nodes
  it changed, in `enforce` mode), then every node mid-change (as its actuator reports) is advanced one step.
- Per-node isolation (`isolation.py`): nodes mid-change are frozen out of new plans and the pods their changes
  are for are spoken for; nodes whose change failed are quarantined with backoff. The rest keeps planning.
- Batching: a window opens with the first pending pod and closes after `batch_idle_s` without new pending
  pods or `batch_timeout_s` after it opened, so a burst of pods is planned together.
- A new plan is made only when the pending pods or the cluster's layouts changed since the last one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from optimizer.controller.actuator import ActuationSettings, ActuationStatus, Actuator
from optimizer.controller.enactment import node_changes
from optimizer.controller.forecast import ArrivalForecast, ForecastSettings
from optimizer.controller.guard import GuardedPort, LeadershipLost
from optimizer.controller.isolation import Isolation, IsolationSettings, isolation, plannable
from optimizer.controller.observer import ControllerObserver
from optimizer.controller.port import ClusterPort
from optimizer.controller.promises import PromiseSettings, PromiseWatch
from optimizer.controller.reasons import EventReason
from solver.plan import Plan, PlanPolicy
from solver.planner import make_plan
from solver.policies import FORECAST_READERS, check_planner_name, planner_names
from solver.snapshot import ClusterSnapshot, NodeState

log = logging.getLogger(__name__)


class ControllerSettings(BaseModel):
    mode: Literal["recommend", "enforce"] = "recommend"
    planner: Annotated[str, AfterValidator(check_planner_name)] = Field(
        default="optimal", description="a policy of solver.policies: " + ", ".join(planner_names())
    )
    batch_idle_s: float = Field(default=10.0, ge=0)
    batch_timeout_s: float = Field(default=60.0, ge=0)
    policy: PlanPolicy = PlanPolicy()
    actuation: ActuationSettings = ActuationSettings()
    isolation: IsolationSettings = IsolationSettings()
    promises: PromiseSettings = PromiseSettings()
    forecast: ForecastSettings = ForecastSettings()

    @property
    def plans_for_forecast(self) -> bool:
        """Whether the planner reads the snapshot's forecast (the proactive policy)."""
        return self.planner in FORECAST_READERS


class Controller:
    """The reconcile loop's state between ticks: the batch window and what the last plan was made for."""

    def __init__(
        self,
        port: ClusterPort,
        settings: ControllerSettings | None = None,
        *,
        actuator: Actuator,
        observer: ControllerObserver | None = None,
        may_act: Callable[[], bool] = lambda: True,
    ) -> None:
        """`actuator` carries node changes out (the composition root picks it); `observer` sees every snapshot,
        plan and event (the metrics exporter); `may_act` is asked before every step that changes the cluster
        (leader election: a replica that lost its lease stops at the next step)."""
        self.actuator = actuator
        self.observer = observer
        self.port: ClusterPort = GuardedPort(port, may_act, observer)
        self.may_act = may_act
        self.settings = settings or ControllerSettings()
        self.last_plan: Plan | None = None
        self.plans_made = 0
        self._window_opened: float | None = None
        self._last_arrival = 0.0
        self._seen: set[str] = set()
        self._planned_for: tuple[object, ...] | None = None
        self._quarantine_reported: dict[str, str] = {}  # node -> the failed change already reported
        self._promises = PromiseWatch(self.settings.promises)
        self._forecast = ArrivalForecast(self.settings.forecast)
        self._forecast_planned_at: float | None = None
        self._layouts = _LayoutMemo()

    def tick(self) -> Plan | None:
        """One reconcile pass; returns the plan made in this pass, if any."""
        if not self.may_act():
            return None
        try:
            return self._pass()
        except LeadershipLost as err:
            log.warning("%s; stopping this pass", err)
            return None

    def _pass(self) -> Plan | None:
        snapshot = self.port.snapshot()
        now = self.port.now()
        statuses = self.actuator.statuses(self.port, snapshot)
        if self.observer:
            self.observer.snapshot_taken(snapshot, now, statuses)
        self.actuator.tend(self.port, snapshot, may_repair=self.settings.mode == "enforce")
        self._advance_active(snapshot, statuses)
        held = isolation(statuses, now, self.settings.isolation)
        self._report_quarantine(held, statuses)
        suspect = self._promises.check(self.port, snapshot, now)
        held = held.model_copy(update={"quarantined": {**suspect, **held.quarantined}})
        if self.observer:
            self.observer.isolation_changed(held)
        seen = plannable(snapshot, held)
        if self.settings.plans_for_forecast:
            self._forecast.observe(now, snapshot)
            seen = seen.model_copy(update={"forecast": self._forecast.demand(now)})
        if not self._window_closed(seen) and not self._forecast_due(seen, now):
            return None  # the batch window is open, or nothing is pending and no forecast is due
        forecast = tuple((tuple(sorted(d.requests.items())), d.count) for d in seen.forecast)
        situation = (frozenset(p.name for p in seen.pods), self._layouts(seen), held.held, forecast)
        if situation == self._planned_for:
            return None
        plan = make_plan(seen, self.settings.policy, self.settings.planner)
        if not seen.pods:
            self._forecast_planned_at = now  # a plan for the forecast alone: the next waits `forecast.replan_s`
        self._planned_for = situation  # only once a plan exists: a planning error is tried again next pass
        self.plans_made += 1
        self.last_plan = plan
        plan_id = f"plan-{self.plans_made}"
        self._publish(plan, plan_id)
        changes = node_changes(seen, plan, plan_id)
        self._promises.planned(plan, {c.node for c in changes}, now)
        if self.observer:
            targets = {change.node: self.actuator.target(seen, change) for change in changes}
            self.observer.plan_made(plan, seen, plan_id, targets)
        if self.settings.mode == "enforce":
            try:
                # the whole cluster: what nodes held out of planning are labelled with must stay in use
                self.actuator.start(self.port, snapshot, changes, self.may_act)
            except Exception:
                self._planned_for = None  # not carried out: the next pass plans again
                raise
        return plan

    def finish_in_flight(self) -> list[str]:
        """A pass for a stopping replica: advance every change in flight one step, plan nothing new. Returns the
        nodes still mid-change afterwards (each step is recorded, so whoever leads next resumes them)."""
        if not self.may_act():
            return []
        try:
            snapshot = self.port.snapshot()
            self._advance_active(snapshot, self.actuator.statuses(self.port, snapshot))
            statuses = self.actuator.statuses(self.port, self.port.snapshot())
        except LeadershipLost as err:
            log.warning("%s; leaving the changes in flight to the next leader", err)
            return []
        return sorted(name for name, status in statuses.items() if status.active)

    def _advance_active(self, snapshot: ClusterSnapshot, statuses: dict[str, ActuationStatus]) -> None:
        """One step of every change in flight."""
        for node in snapshot.nodes:
            status = statuses.get(node.name)
            if status is not None and status.active:
                self.actuator.advance(self.port, snapshot, node)

    def _report_quarantine(self, held: Isolation, statuses: dict[str, ActuationStatus]) -> None:
        """One Event and log line per failed change that put its node in quarantine."""
        for node, until in sorted(held.quarantined.items()):
            plan_id = statuses[node].plan_id
            if self._quarantine_reported.get(node) == plan_id:
                continue
            self._quarantine_reported[node] = plan_id
            failures = statuses[node].failures
            message = f"{failures} failed change(s) in a row: not planned until t={until:.0f}; its pods go elsewhere"
            log.warning("node=%s quarantined: %s", node, message)
            self.port.record_event("Node", node, EventReason.NODE_QUARANTINED, message)

    def _forecast_due(self, snapshot: ClusterSnapshot, now: float) -> bool:
        """With nothing pending, plan for the forecast alone, at most once per `forecast.replan_s`."""
        if not snapshot.forecast or snapshot.pods:
            return False
        last = self._forecast_planned_at
        return last is None or now - last >= self.settings.forecast.replan_s

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
            self.port.record_event(
                "Pod", placement.pod, EventReason.PLANNED, f"{plan_id} serves it on {placement.node}"
            )
        for unplaced in plan.unplaced:
            self.port.record_event("Pod", unplaced.pod, EventReason.UNPLACED, unplaced.reason)
        o = plan.objectives
        log.info(
            "plan=%s status=%s served=%d unplaced=%d evictions=%d reconfigurations=%d",
            plan_id, plan.status, o.served_pods, len(plan.unplaced), o.evicted_pods, o.reconfigured_gpus,
        )  # fmt: skip


Layouts = tuple[tuple[str, str], ...]


def _node_layouts(node: NodeState) -> Layouts:
    """One node's MIG layouts, compactly: `(node/gpu, profile@start:holder,…)` per GPU."""
    return tuple(
        (f"{node.name}/{g.index}", ",".join(f"{i.profile}@{i.start}:{i.pod or ''}" for i in g.instances))
        for g in node.gpus
    )


class _LayoutMemo:
    """What the cluster's MIG layouts are, compactly (a change here warrants a new plan), remade only for nodes
    whose state object is new: the twin and the Kubernetes adapter hand back the same frozen `NodeState` while a
    node is unchanged, and at 777 nodes the strings are most of a pass outside the planner."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[NodeState, Layouts]] = {}  # node -> the state its layouts were made from

    def __call__(self, snapshot: ClusterSnapshot) -> Layouts:
        known: dict[str, tuple[NodeState, Layouts]] = {}
        layouts: list[tuple[str, str]] = []
        for node in sorted(snapshot.nodes, key=lambda n: n.name):
            cached = self._known.get(node.name)
            if cached is None or cached[0] is not node:
                cached = (node, _node_layouts(node))
            known[node.name] = cached
            layouts += cached[1]
        self._known = known  # nodes gone from the snapshot are forgotten
        return tuple(layouts)
