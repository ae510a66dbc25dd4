"""mig-manager runs that end and leave a node broken: found on every node, reported, repaired on migopt's own.

Two ways, both from mig-parted's Go port (v0.13.0 to v0.15.0, `pkg/mig/reconfigure/reconfigure.go`; spec §1.3, §7.1):

- **operands left paused**: the state says `success` or `failed`, yet some `nvidia.com/gpu.deploy.*` label is still
  `paused-for-mig-change`. After its first complete run a mig-manager process stops restoring the labels on every
  later exit (package-level flags never reset), so a later failure, or the "already applied" shortcut after a wedged
  run, leaves them paused: the device plugin stays down and the node advertises nothing.
- **pending timed out**: a run gives up after waiting 5 minutes for an operand's pods and returns without writing a
  state: `pending` stays and the operands stay paused. mig-manager then waits for the next change of the label.

Each is reported once per occurrence (a Warning Event, a log line; the metrics count the Events). It is repaired
only where migopt itself started the change the run answered: its own record (never anything on the node) says it
set the config label, and the label still names that record's target. The repair writes only what the remedy
needs: for a timed-out run of a change still in progress, the label removed and set again (mig-manager acts on a
changed label, and a full run restores the operands itself); otherwise the deploy labels that are paused, back to
the value they had when migopt set the config label (`true` when they had none or were already paused: what
mig-manager's own restore writes for any label it paused, `maybeSetTrue`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from nvidia_protocol.labels import (
    CLIENT_DEPLOY_LABEL,
    DEPLOY_LABELS,
    DEPLOY_PREFIX,
    MIG_CONFIG_LABEL,
    MIG_STATE_LABEL,
    PAUSED,
)
from optimizer.actuators.node_record import ChangeRecord
from optimizer.controller.actuator import ACTIVE, ActuationSettings, Phase
from optimizer.controller.port import ClusterPort
from optimizer.controller.reasons import EventReason
from solver.snapshot import ClusterSnapshot, NodeState

log = logging.getLogger(__name__)

FINISHED_STATES = frozenset({"success", "failed"})


class WedgeKind(StrEnum):
    OPERANDS_LEFT_PAUSED = "operands_left_paused"
    PENDING_TIMED_OUT = "pending_timed_out"


REASONS = {
    WedgeKind.OPERANDS_LEFT_PAUSED: EventReason.OPERANDS_LEFT_PAUSED,
    WedgeKind.PENDING_TIMED_OUT: EventReason.RUN_TIMED_OUT,
}


class Wedge(BaseModel):
    """One node left broken by mig-manager, as seen in one pass."""

    model_config = ConfigDict(frozen=True)

    node: str
    kind: WedgeKind
    config: str
    state: str
    paused: tuple[str, ...]
    pending_s: float | None = None

    def describe(self) -> str:
        labels = ", ".join(label.removeprefix(DEPLOY_PREFIX) for label in self.paused)
        if self.kind is WedgeKind.OPERANDS_LEFT_PAUSED:
            return (
                f"mig-manager's run of {self.config!r} ended {self.state} but left nvidia.com/gpu.deploy.{{{labels}}} "
                f"at {PAUSED}: the operands stay down"
            )
        left = f", operands nvidia.com/gpu.deploy.{{{labels}}} paused" if self.paused else ""
        return (
            f"nvidia.com/mig.config.state has been pending for {self.pending_s or 0:.0f}s on {self.config!r}, longer "
            f"than mig-manager waits for operands: its run ended without a state{left}"
        )


MIG_MANAGER_OPERANDS = frozenset(DEPLOY_LABELS) | {CLIENT_DEPLOY_LABEL}
"""The deploy labels mig-manager pauses and restores; the GPU Operator's others (driver, toolkit, sandbox…) are
never migopt's to write, whatever value they hold."""


def paused_operands(labels: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(sorted(k for k, v in labels.items() if k in MIG_MANAGER_OPERANDS and v == PAUSED))


def deploy_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The node's mig-manager operand labels, as a change records them before it sets the config label."""
    return {k: v for k, v in labels.items() if k in MIG_MANAGER_OPERANDS}


def find_wedge(node: NodeState, pending_since: float | None, now: float, settings: ActuationSettings) -> Wedge | None:
    """The node's wedge, if it has one; `pending_since` is when its `pending` began, as far as migopt knows."""
    state = node.labels.get(MIG_STATE_LABEL, "")
    paused = paused_operands(node.labels)
    config = node.labels.get(MIG_CONFIG_LABEL, "")
    if state in FINISHED_STATES and paused:
        return Wedge(node=node.name, kind=WedgeKind.OPERANDS_LEFT_PAUSED, config=config, state=state, paused=paused)
    if state == "pending" and pending_since is not None and now - pending_since >= settings.pending_timeout_s:
        return Wedge(
            node=node.name, kind=WedgeKind.PENDING_TIMED_OUT, config=config, state=state, paused=paused,
            pending_s=now - pending_since,
        )  # fmt: skip
    return None


def started_by_migopt(record: ChangeRecord | None, node: NodeState) -> bool:
    """The run on this node answered migopt's own label: its record says it set the label, which still names the
    record's target. Nothing on the node itself is taken as evidence."""
    return record is not None and record.labelled and node.labels.get(MIG_CONFIG_LABEL) == record.target


def restored_values(record: ChangeRecord, paused: tuple[str, ...]) -> dict[str, str]:
    """Each paused label back to its value before the change; `true` where it had none or was paused already."""
    values: dict[str, str] = {}
    for label in paused:
        before = record.operands.get(label)
        values[label] = before if before is not None and before != PAUSED else "true"
    return values


class WedgeWatch:
    """What one controller process remembers between passes: when it first saw each node `pending` and which
    wedges it has reported (bounded by the nodes that have one)."""

    def __init__(self, settings: ActuationSettings) -> None:
        self.settings = settings
        self._pending_seen: dict[str, tuple[str, float]] = {}  # node -> (config label, first pass it was pending)
        self._reported: dict[str, tuple[object, ...]] = {}  # node -> the wedge last reported
        self._quiet: dict[str, NodeState] = {}  # node -> its state when last seen neither pending nor wedged

    def pending_since(self, node: NodeState, record: ChangeRecord | None, now: float) -> float | None:
        """When the node's current `pending` began, as far as migopt knows: its own last (re)labelling of the node
        (recorded, so it survives a restart; a retry's `pending` may follow the last one without a gap that a
        pass could see), else the first pass that saw it."""
        if node.labels.get(MIG_STATE_LABEL) != "pending":
            self._pending_seen.pop(node.name, None)
            return None
        config = node.labels.get(MIG_CONFIG_LABEL, "")
        seen = self._pending_seen.get(node.name)
        if seen is None or seen[0] != config:
            seen = self._pending_seen[node.name] = (config, now)
        if record is not None and record.labelled_at is not None and started_by_migopt(record, node):
            return record.labelled_at
        return seen[1]

    def wedges(
        self, snapshot: ClusterSnapshot, records: Mapping[str, ChangeRecord], now: float
    ) -> list[tuple[Wedge, ChangeRecord | None]]:
        """Every node's wedge this pass, with the node's record; forgets nodes that are gone."""
        names = {n.name for n in snapshot.nodes}
        for memo in (self._pending_seen, self._reported, self._quiet):
            for gone in set(memo) - names:
                del memo[gone]
        found = []
        for node in snapshot.nodes:
            if self._quiet.get(node.name) is node:
                continue  # the same state as last pass: still no wedge, whatever its record or the time
            record = records.get(node.name)
            wedge = find_wedge(node, self.pending_since(node, record, now), now, self.settings)
            if wedge is None:
                self._reported.pop(node.name, None)
            else:
                found.append((wedge, record))
            self._remember_quiet(node, wedge)
        return found

    def _remember_quiet(self, node: NodeState, wedge: Wedge | None) -> None:
        """A node neither `pending` nor wedged stays so while its (frozen) state object is the same: its labels alone
        decide it, so the next pass may skip it (its memos were cleared this pass: nothing sets them meanwhile)."""
        if wedge is None and node.labels.get(MIG_STATE_LABEL) != "pending":
            self._quiet[node.name] = node
        else:
            self._quiet.pop(node.name, None)

    def report(self, port: ClusterPort, wedge: Wedge, action: str) -> None:
        """A Warning Event and a log line, once per occurrence: until the node is seen without it, or with another
        label or state (or, for operands left paused, another set of them; a timed-out `pending` stays after its
        operands are restored, and is the same occurrence)."""
        paused = wedge.paused if wedge.kind is WedgeKind.OPERANDS_LEFT_PAUSED else ()
        key = (wedge.kind, wedge.config, wedge.state, paused)
        if self._reported.get(wedge.node) == key:
            return
        self._reported[wedge.node] = key
        message = f"{wedge.describe()}; {action}"
        log.warning("node=%s mig-manager wedge=%s %s", wedge.node, wedge.kind, message)
        port.record_event("Node", wedge.node, REASONS[wedge.kind], message)


def restore_operands(port: ClusterPort, wedge: Wedge, record: ChangeRecord) -> None:
    """Write the paused deploy labels back (only those), then say so."""
    values = restored_values(record, wedge.paused)
    port.patch_node(wedge.node, labels=values)
    written = ", ".join(f"{k}={v}" for k, v in sorted(values.items()))
    message = f"restored {written}, left paused by mig-manager after {record.plan_id}'s change to {record.target!r}"
    log.info("node=%s %s", wedge.node, message)
    port.record_event("Node", wedge.node, EventReason.OPERANDS_RESTORED, message)


def repair_plan(wedge: Wedge, record: ChangeRecord | None, node: NodeState, settings: ActuationSettings,
                may_repair: bool) -> tuple[str, str]:  # fmt: skip
    """What to do about a wedge: (`restore` | `retrigger` | `defer` | `report`, the words for the report)."""
    if not started_by_migopt(record, node) or record is None:
        return "report", "not repaired: migopt did not set the label this run answered"
    if not settings.repair_paused_operands:
        return "report", "not repaired: repair_paused_operands is off"
    if not may_repair:
        return "report", "not repaired: recommend mode"
    if record.phase in ACTIVE:
        if wedge.kind is WedgeKind.PENDING_TIMED_OUT and record.phase is Phase.APPLYING:
            return "retrigger", "migopt removes and sets nvidia.com/mig.config again (a retry of its change)"
        if wedge.kind is WedgeKind.OPERANDS_LEFT_PAUSED and wedge.state == "success":
            return "restore", "migopt restores them (its change is waiting for the node's devices)"
        return "defer", "left to migopt's change in progress (it retries or ends it, then restores them)"
    if not wedge.paused:
        return "report", "no operand is paused: nothing to restore"
    return "restore", f"migopt restores them ({record.plan_id}'s change ended {record.phase})"
