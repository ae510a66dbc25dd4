"""The mig-manager label protocol: the actuator that carries a node's change out through NVIDIA's GPU Operator.

    cordoning → evicting → labelling → applying → verifying → done
                    ↘ abandoned (a PodDisruptionBudget kept refusing past the deadline)
                                          ↘ failed (mig-manager `failed` after the retries, or stuck)

A plan's changes start with one write of the owned mig-parted ConfigMap (an entry per changing node, covering
every GPU of it: spec §2.2), then each node is recorded and driven through the phases above.

Every step is saved in the node's record (`node_record`: the controller's own object, never the node) *before*
the action it announces, so a controller killed at any point and restarted resumes from the records alone. It
never evicts a pod the plan did not name (the list, with each pod's UID, is recorded when the change starts),
never evicts a successor of a planned pod (every request carries the planned UID as a precondition, so a pod
asked but not confirmed, after a failed request or a restart, is simply asked again, with backoff, until the
deadline), never takes an earlier mig-manager run's state for this change's (the state label is removed in the
same patch that names the config), and never leaves a node cordoned (it records that it cordoned before
cordoning, and every end uncordons what it cordoned). `advance` is idempotent: call it on every reconcile tick.

`tend`, also every tick, looks at every node for what mig-manager's own bugs leave behind (operands left paused
after a finished run, a `pending` whose run ended without a state: `wedges.py`), reports it, and repairs it only on
nodes whose change migopt started; a timed-out run of a change in progress is re-triggered as a retry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import lru_cache

from nvidia_protocol.labels import MIG_CONFIG_LABEL, MIG_STATE_LABEL
from nvidia_protocol.migparted import (
    MigConfigEntry,
    MigPartedConfig,
    config_name,
    empty_config,
    garbage_collect,
    node_entry,
    parse_config,
    reads_back,
    render_config,
    with_entry,
)
from nvidia_protocol.standard_configs import standard_config
from optimizer.actuators.node_record import ChangeRecord, MirrorCheck, load_records, parse_record, save
from optimizer.actuators.wedges import WedgeWatch, deploy_labels, repair_plan, restore_operands
from optimizer.controller.actuator import ACTIVE, ActuationSettings, ActuationStatus, NodeChange, Phase
from optimizer.controller.port import ClusterPort, EvictionOutcome
from optimizer.controller.reasons import EventReason
from solver.catalog import load_catalog
from solver.errors import MigoptError
from solver.profiles import MIG_RESOURCE_PREFIX
from solver.snapshot import GPU_RESOURCE, ClusterSnapshot, NodeState

log = logging.getLogger(__name__)


class MigManagerActuator:
    """The `Actuator` of the mig-manager label protocol (`optimizer.controller.actuator`)."""

    def __init__(self, settings: ActuationSettings | None = None) -> None:
        self.settings = settings or ActuationSettings()
        self._mirrors = MirrorCheck()
        self._wedges = WedgeWatch(self.settings)
        self._statuses: dict[str, tuple[ChangeRecord, ActuationStatus]] = {}  # node -> status of that record
        self._written: tuple[str, MigPartedConfig] | None = None  # the last config written, with its text

    def statuses(self, port: ClusterPort, snapshot: ClusterSnapshot) -> dict[str, ActuationStatus]:
        records = load_records(port)
        for node in snapshot.nodes:
            self._mirrors.check(port, node, records.get(node.name))
        return self._status_of(records)

    def _status_of(self, records: dict[str, ChangeRecord]) -> dict[str, ActuationStatus]:
        """Each record's status, made again only for records that changed: a record is frozen and a stored text
        parses to the same object while it stands (`parse_record`), and most of them stand between passes."""
        known: dict[str, tuple[ChangeRecord, ActuationStatus]] = {}
        for name, record in records.items():
            cached = self._statuses.get(name)
            if cached is None or cached[0] is not record:
                cached = (record, record.status(name))
            known[name] = cached
        self._statuses = known
        return {name: status for name, (_, status) in known.items()}

    def target(self, snapshot: ClusterSnapshot, change: NodeChange) -> str:
        return config_name(_entries(_node(snapshot, change.node), change))

    def start(
        self, port: ClusterPort, snapshot: ClusterSnapshot, changes: Sequence[NodeChange], may_act: Callable[[], bool]
    ) -> None:
        """Write the config entries the changing nodes need (before any label names one), then start each node."""
        if not changes:
            return
        records = load_records(port)
        config = self._read_config(port)
        existing = set(config.mig_configs)  # entries mig-manager may already have; new ones need time to reach it
        nodes = {n.name: n for n in snapshot.nodes}
        named: list[tuple[NodeChange, str, bool]] = []
        for change in changes:
            entries = _entries(nodes[change.node], change)
            label = config_name(entries)
            config = with_entry(config, label, entries)
            named.append((change, label, label not in existing))
        in_use = {n.labels[MIG_CONFIG_LABEL] for n in snapshot.nodes if MIG_CONFIG_LABEL in n.labels}
        in_flight = {r.target for r in records.values() if r.phase in ACTIVE}  # labels about to be set
        config = _restore_standard_names(config, in_use, snapshot)
        config = garbage_collect(config, in_use | in_flight | {label for _, label, _ in named})
        text = render_config(config)
        port.write_mig_config(text)
        self._written = (text, config) if reads_back(config) else None
        for change, label, new_entry in named:
            if not may_act():
                return
            previous = records.get(change.node)
            _start_node(port, snapshot, nodes[change.node], change, label, new_entry, previous, self.settings)

    def _read_config(self, port: ClusterPort) -> MigPartedConfig:
        """The owned ConfigMap, parsed; when it holds exactly the text this actuator last wrote, the config that text
        was rendered from (what parsing it gives back: `migparted.reads_back`), as most plans follow another."""
        text = port.read_mig_config()
        if self._written is not None and text == self._written[0]:
            return self._written[1]
        return _parse_owned(text)

    def advance(self, port: ClusterPort, snapshot: ClusterSnapshot, node: NodeState) -> Phase | None:
        text = port.read_records().get(node.name)  # this node's record alone: parsing is per record
        record = None if text is None else parse_record(text)
        if record is None or record.phase not in ACTIVE:
            return None if record is None else record.phase
        return _Step(port, snapshot, node, record, self.settings).run()

    def tend(self, port: ClusterPort, snapshot: ClusterSnapshot, may_repair: bool) -> None:
        """Report every node mig-manager left wedged (`wedges.py`); repair those whose change migopt started."""
        records = load_records(port)
        nodes = {n.name: n for n in snapshot.nodes}
        for wedge, record in self._wedges.wedges(snapshot, records, port.now()):
            node = nodes[wedge.node]
            action, words = repair_plan(wedge, record, node, self.settings, may_repair)
            self._wedges.report(port, wedge, words)
            if record is None or action not in ("restore", "retrigger"):
                continue
            if action == "retrigger":
                phase = _Step(port, snapshot, node, record, self.settings).retrigger(wedge.pending_s or 0.0)
                if phase is not Phase.FAILED or not wedge.paused:
                    continue  # the new run restores the operands when it completes; or the retries are spent
            restore_operands(port, wedge, record)


def read_status(node: str, text: str) -> ActuationStatus | None:
    """One stored record as a status (for the adapter, which holds the records' cache itself)."""
    record = parse_record(text)
    return None if record is None else record.status(node)


def _node(snapshot: ClusterSnapshot, name: str) -> NodeState:
    return next(n for n in snapshot.nodes if n.name == name)


def _entries(node: NodeState, change: NodeChange) -> list[MigConfigEntry]:
    """The mig-parted entries that give every GPU of the node its target."""
    models = {g.index: g.gpu_model for g in node.gpus}
    targets = tuple(
        (g.index, models[g.index].key, tuple(g.target.items())) for g in sorted(change.gpus, key=lambda g: g.index)
    )
    return list(_node_entries(targets))


@lru_cache(maxsize=1024)
def _node_entries(targets: tuple[tuple[int, str, tuple[tuple[str, int], ...]], ...]) -> tuple[MigConfigEntry, ...]:
    """`node_entry` for (index, model key, target) per GPU, once per distinct node target: a plan's changes repeat
    a few, and checking each map's layout is most of the work. Entries are frozen; errors are raised, not kept."""
    catalog = load_catalog()
    return tuple(node_entry([(index, catalog.model(key), dict(target)) for index, key, target in targets]))


def _parse_owned(text: str | None) -> MigPartedConfig:
    if text is None:
        return empty_config()
    try:
        return _parsed(text)
    except MigoptError as err:
        log.warning("owned mig-parted config is invalid, rewriting it: %s", err)
        return empty_config()


@lru_cache(maxsize=4)
def _parsed(text: str) -> MigPartedConfig:
    """The owned ConfigMap parsed once per text: it changes only when a plan writes it, but every change start
    reads it (0.85 s a parse at 777 nodes). The config is frozen and only ever replaced, never edited in place."""
    return parse_config(text)


def _restore_standard_names(config: MigPartedConfig, in_use: set[str], snapshot: ClusterSnapshot) -> MigPartedConfig:
    """Nodes may be labelled with the operator's standard names (`all-1g.10gb`…): an entry for each must stay in
    the file, or a mig-manager restart on such a node fails. Put back any that are missing (a ConfigMap found
    broken and rewritten, or one that never had them), built for the cluster's GPU models."""
    missing = in_use - set(config.mig_configs)
    if not missing:
        return config
    catalog = load_catalog()
    names = {g.model for n in snapshot.nodes for g in n.gpus}  # a cluster has thousands of GPUs, of a few models
    models = sorted({m.key: m for m in map(catalog.model, names)}.items())
    standard = standard_config([m for _, m in models]).mig_configs if models else {}
    for name in sorted(missing & set(standard)):
        config = with_entry(config, name, standard[name])
    return config


def _start_node(
    port: ClusterPort,
    snapshot: ClusterSnapshot,
    node: NodeState,
    change: NodeChange,
    label: str,
    new_entry: bool,
    previous: ChangeRecord | None,
    settings: ActuationSettings,
) -> None:
    """Record the change (the pods to evict with their UIDs included), then begin cordoning."""
    now = port.now()
    failures = previous.failures if previous is not None and previous.phase in FAILED_ENDS else 0
    record = ChangeRecord(
        plan_id=change.plan_id,
        phase=Phase.CORDONING,
        target=label,
        evict={pod: _uid(snapshot, pod) for pod in sorted(change.evict)},
        expected=change.expected,
        serves=sorted(change.serves),
        changing_gpus=sorted(g.index for g in change.gpus if g.reconfigure),
        deadline=now + settings.eviction_timeout_s,
        label_after=now + settings.config_propagation_s if new_entry else None,
        failures=failures,
    )
    save(port, change.node, record)
    port.record_event("Node", change.node, EventReason.RECONFIGURATION_STARTED, f"plan {change.plan_id}: {label}")
    _Step(port, snapshot, node, record, settings).run()  # cordon now: no pod may land on it after the plan


def _uid(snapshot: ClusterSnapshot, pod: str) -> str | None:
    """The running pod's UID as the snapshot shows it; None when it shows none (looked up by name in the snapshot's
    own index: building a map of every running pod per node took most of a change's start at 6,000 pods)."""
    found = snapshot.running_by_name.get(pod)
    return None if found is None else found.uid


FAILED_ENDS = frozenset({Phase.FAILED, Phase.ABANDONED})
_LATE_LABEL_S = 1.0
"""A label write that took longer than this (retried) moves the recorded labelling time to when it landed."""


class _Step:
    """One node taken as far as it can go now; every change to the record is saved before the action."""

    def __init__(
        self, port: ClusterPort, snapshot: ClusterSnapshot, node: NodeState, record: ChangeRecord, s: ActuationSettings
    ) -> None:
        self.port, self.snapshot, self.node, self.record, self.settings = port, snapshot, node, record, s
        self.now = port.now()

    def run(self) -> Phase:
        phase = self.record.phase
        if phase is Phase.CORDONING:
            return self._cordon()
        if phase is Phase.EVICTING:
            return self._evict()
        if phase is Phase.LABELLING:
            return self._label()
        if phase is Phase.APPLYING:
            return self._apply()
        return self._verify()

    def _save(self, **changes: object) -> None:
        self.record = save(self.port, self.node, self.record.model_copy(update=changes))

    def _enter(self, phase: Phase, deadline: float) -> Phase:
        self._save(phase=phase, deadline=deadline, retry_at=None)
        self.port.record_event("Node", self.node.name, EventReason.RECONFIGURATION_PHASE, f"phase {phase}")
        log.info("node=%s phase=%s", self.node.name, phase)
        return phase

    def _cordon(self) -> Phase:
        if not self.node.unschedulable and not self.record.cordoned:
            self._save(cordoned=True)
        self.port.set_unschedulable(self.node.name, True)
        return self._enter(Phase.EVICTING, self.now + self.settings.eviction_timeout_s)

    # ---- evicting: each planned pod, by the UID it had when planned, asked again after a failure ---------------

    def _remaining(self) -> list[str]:
        """Planned pods still holding a device here as the same pod (a new pod under the name is not ours)."""
        holding = {pod for gpu in self.node.gpus for pod in gpu.holders}
        return [
            pod
            for pod, uid in self.record.evict.items()
            if pod in holding and (uid is None or _uid(self.snapshot, pod) in (None, uid))
        ]

    def _intruders(self) -> list[str]:
        """Pods on a GPU to be rebuilt that the plan did not name (bound after the plan was made): mig-manager
        could not rebuild that GPU, and migopt evicts nobody the plan did not name."""
        changing = set(self.record.changing_gpus)
        return sorted(
            pod
            for gpu in self.node.gpus
            if gpu.index in changing
            for pod in gpu.holders
            if pod not in self.record.evict
        )

    def _evict(self) -> Phase:
        intruders = self._intruders()
        if intruders:
            return self._finish(
                Phase.ABANDONED,
                f"pods the plan did not name now hold GPUs that must change ({', '.join(intruders)}): "
                "they are not evicted; the change is given up and planned again",
            )
        remaining = self._remaining()
        if not remaining:
            return self._enter(Phase.LABELLING, self.now + self.settings.apply_timeout_s)
        if self.now >= self.record.deadline:
            return self._finish(Phase.ABANDONED, f"pods {', '.join(remaining)} could not be evicted in time")
        if self.now < (self.record.retry_at or 0):
            return Phase.EVICTING
        blocked = False
        for pod in remaining:
            if pod in self.record.evicted:
                continue  # accepted: it is terminating; wait for it to go
            try:
                blocked |= self._evict_once(pod) is EvictionOutcome.BLOCKED
            except Exception:
                self._back_off()  # the request failed: the pod stays asked-not-evicted and is asked again later
                raise
        if blocked:
            self._back_off()
        return Phase.EVICTING

    def _evict_once(self, pod: str) -> EvictionOutcome:
        """Mark, then ask, with the pod's UID as a precondition: asking again never touches a successor."""
        if pod not in self.record.asked:
            self._save(asked=sorted({*self.record.asked, pod}))
        outcome = self.port.evict(pod, self.record.evict[pod])
        if outcome is EvictionOutcome.BLOCKED:
            reason, message = EventReason.EVICTION_BLOCKED, "a PodDisruptionBudget refused the eviction; will retry"
            self.port.record_event("Pod", pod, reason, message)
            return outcome
        self._save(evicted=sorted({*self.record.evicted, pod}))
        message = f"evicted to reconfigure the MIG layout of node {self.node.name}"
        self.port.record_event("Pod", pod, EventReason.EVICTED, message)
        return outcome

    def _back_off(self) -> None:
        attempts = self.record.eviction_attempts + 1
        wait = self.settings.eviction_backoff_s * 2 ** min(attempts - 1, 6)
        self._save(eviction_attempts=attempts, retry_at=self.now + wait)

    # ---- labelling and applying: a state label counts only if mig-manager wrote it after migopt's label --------

    def _relabel(self, clear_config: bool = False, **changes: object) -> None:
        """Remove any earlier run's state with the same patch that names the config, so the next `success` or
        `failed` is mig-manager's answer to this label (its `pending` and its "already applied" shortcut both come
        after it reads the label: spec §1.3). A retry removes the config label first (spec §1.2). The record
        (with `changes`) is saved first, with the time, from which a timed-out `pending` is judged; saved again if
        the label landed later (the requests were retried after a 429 or a conflict)."""
        self._save(labelled_at=self.port.now(), **changes)
        if clear_config:
            self.port.patch_node(self.node.name, labels={MIG_CONFIG_LABEL: None, MIG_STATE_LABEL: None})
        self.port.patch_node(self.node.name, labels={MIG_STATE_LABEL: None, MIG_CONFIG_LABEL: self.record.target})
        landed = self.port.now()
        if landed - (self.record.labelled_at or landed) > _LATE_LABEL_S:
            self._save(labelled_at=landed)

    def _label(self) -> Phase:
        if self.now < (self.record.label_after or 0):
            return Phase.LABELLING  # the new entry may not be in mig-manager's copy of the ConfigMap yet
        if not self.record.labelled:
            # a node already labelled with the target (an earlier change, perhaps one whose run hung) needs the
            # label removed and set again, or mig-manager would not run (same-value relabels are ignored)
            again = self.node.labels.get(MIG_CONFIG_LABEL) == self.record.target
            self._relabel(clear_config=again, labelled=True, operands=deploy_labels(self.node.labels))
        elif self.node.labels.get(MIG_CONFIG_LABEL) != self.record.target:
            self._relabel()
        # else: labelled before a restart; mig-manager's answer to it may already be there
        return self._enter(Phase.APPLYING, self.now + self.settings.apply_timeout_s)

    def _apply(self) -> Phase:
        state = self.node.labels.get(MIG_STATE_LABEL)
        if self.node.labels.get(MIG_CONFIG_LABEL) != self.record.target:
            self._relabel()  # someone changed the label under us
            return Phase.APPLYING
        if state == "success" and _advertises(self.node, self.record.expected):
            return self._enter(Phase.VERIFYING, self.now + self.settings.apply_timeout_s)
        if state == "failed":
            return self._retry("mig-manager failed", EventReason.RECONFIGURATION_RETRY)
        if self.now >= self.record.deadline:
            target = self.record.target
            return self._finish(Phase.FAILED, f"mig-manager did not finish {target} in time (state {state})")
        return Phase.APPLYING

    def retrigger(self, pending_s: float) -> Phase:
        """mig-manager's run ended without a state (a timed-out wait; spec §7.1): run it again, as a failed run is
        retried, within the same `max_retries`."""
        why = f"mig-manager's run ended without a state (pending for {pending_s:.0f}s)"
        return self._retry(why, EventReason.RUN_RETRIGGERED)

    def _retry(self, why: str, reason: EventReason) -> Phase:
        """Remove and set the label again (spec §1.2), or end the change once the retries are spent."""
        runs = self.record.failed_runs + 1
        if runs > self.settings.max_retries:
            self._save(failed_runs=runs)
            return self._finish(Phase.FAILED, f"mig-manager failed {runs} times on {self.record.target}")
        self._relabel(clear_config=True, failed_runs=runs, deadline=self.now + self.settings.apply_timeout_s)
        self.port.record_event("Node", self.node.name, reason, f"{why}; retry {runs}")
        log.info("node=%s %s; retry %d", self.node.name, why, runs)
        return Phase.APPLYING

    def _verify(self) -> Phase:
        if _advertises(self.node, self.record.expected):
            return self._finish(Phase.DONE, "MIG layout applied and advertised")
        if self.now >= self.record.deadline:
            return self._finish(Phase.FAILED, "the node does not advertise the planned MIG devices")
        return Phase.VERIFYING

    def _finish(self, phase: Phase, message: str) -> Phase:
        """End the change: record the outcome, then uncordon if (and only if) migopt cordoned it."""
        failures = self.record.failures + 1 if phase in FAILED_ENDS else 0
        cordoned = self.record.cordoned
        self._save(phase=phase, retry_at=None, finished_at=self.now, failures=failures, cordoned=False)
        if cordoned:
            self.port.set_unschedulable(self.node.name, False)
        reason = {Phase.DONE: EventReason.RECONFIGURED, Phase.ABANDONED: EventReason.RECONFIGURATION_ABANDONED}.get(
            phase, EventReason.RECONFIGURATION_FAILED
        )
        self.port.record_event("Node", self.node.name, reason, message)
        log.info("node=%s phase=%s message=%r", self.node.name, phase, message)
        return phase


def _advertises(node: NodeState, expected: dict[str, int]) -> bool:
    """The node's MIG resources are what the plan expects (stale zero-count keys ignored)."""
    wanted = {k: v for k, v in expected.items() if v}
    actual = {
        k: v for k, v in node.allocatable.items() if v and (k.startswith(MIG_RESOURCE_PREFIX) or k == GPU_RESOURCE)
    }
    return actual == wanted
