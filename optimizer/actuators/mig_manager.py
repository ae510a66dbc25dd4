"""The mig-manager label protocol: the actuator that carries a node's change out through NVIDIA's GPU Operator.

    cordoning → evicting → labelling → applying → verifying → done
                    ↘ abandoned (a PodDisruptionBudget kept refusing past the deadline)
                                          ↘ failed (mig-manager `failed` after the retries, or stuck)

A plan's changes start with one write of the owned mig-parted ConfigMap (an entry per changing node, covering
every GPU of it: spec §2.2), then each node is recorded and driven through the phases above.

Every step is recorded in the node's annotations *before* the action it announces, so a controller killed at
any point and restarted resumes from the annotations alone: it never evicts a pod twice (a pod is marked before
its eviction is asked for), never evicts a pod the plan did not name (the list is written when the node's
change starts), and never leaves a node cordoned (it records that it cordoned before cordoning, and every end
state uncordons what it cordoned). `advance` is idempotent: call it on every reconcile tick. The annotations are
this module's private record: the rest of the controller reads them only through `recorded_status`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

from nvidia_protocol.labels import MIG_CONFIG_LABEL, MIG_STATE_LABEL
from nvidia_protocol.migparted import (
    MigConfigEntry,
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
from optimizer.controller.actuator import ACTIVE, ActuationSettings, ActuationStatus, NodeChange, Phase
from optimizer.controller.port import ClusterPort, EvictionOutcome
from optimizer.controller.reasons import EventReason
from solver.errors import MigoptError
from solver.profiles import MIG_RESOURCE_PREFIX
from solver.snapshot import GPU_RESOURCE, ClusterSnapshot, NodeState

log = logging.getLogger(__name__)

PREFIX = "migopt.io/"
PLAN = PREFIX + "plan-id"
PHASE = PREFIX + "phase"
DEADLINE = PREFIX + "deadline"
TARGET = PREFIX + "target-config"
EVICT = PREFIX + "evict"
EVICTED = PREFIX + "evicted"
CORDONED = PREFIX + "cordoned-by-migopt"
ATTEMPTS = PREFIX + "attempts"
EXPECTED = PREFIX + "expected-resources"
RETRY_AT = PREFIX + "retry-at"
LABEL_AFTER = PREFIX + "label-after"


_PHASES = {p.value: p for p in Phase}


def phase_of(node: NodeState) -> Phase | None:
    return _PHASES.get(node.annotations.get(PHASE, ""))


def is_active(node: NodeState) -> bool:
    return phase_of(node) in ACTIVE


def recorded_status(node: NodeState) -> ActuationStatus | None:
    """The node's change as its annotations record it; None when there is none (or its phase is unknown)."""
    phase = phase_of(node)
    if phase is None:
        return None
    a = node.annotations
    attempts = a.get(ATTEMPTS, "")
    return ActuationStatus(
        node=node.name,
        plan_id=a.get(PLAN, ""),
        phase=phase,
        target=a.get(TARGET, ""),
        evict=tuple(_listed(a.get(EVICT, ""))),
        evicted=tuple(_listed(a.get(EVICTED, ""))),
        attempts=int(attempts) if attempts.isdigit() else 0,
    )


class MigManagerActuator:
    """The `Actuator` of the mig-manager label protocol (`optimizer.controller.actuator`)."""

    def __init__(self, settings: ActuationSettings | None = None) -> None:
        self.settings = settings or ActuationSettings()

    def status(self, node: NodeState) -> ActuationStatus | None:
        return recorded_status(node)

    def target(self, snapshot: ClusterSnapshot, change: NodeChange) -> str:
        return config_name(_entries(snapshot, change))

    def start(
        self, port: ClusterPort, snapshot: ClusterSnapshot, changes: Sequence[NodeChange], may_act: Callable[[], bool]
    ) -> None:
        """Write the config entries the changing nodes need (before any label names one), then start each node."""
        if not changes:
            return
        config = _read_config(port)
        existing = set(config.mig_configs)  # entries mig-manager may already have; new ones need time to reach it
        named: list[tuple[NodeChange, str, bool]] = []
        for change in changes:
            entries = _entries(snapshot, change)
            label = config_name(entries)
            config = with_entry(config, label, entries)
            named.append((change, label, label not in existing))
        in_use = {n.labels[MIG_CONFIG_LABEL] for n in snapshot.nodes if MIG_CONFIG_LABEL in n.labels}
        config = _restore_standard_names(config, in_use, snapshot)
        config = garbage_collect(config, in_use | {label for _, label, _ in named})
        port.write_mig_config(render_config(config))
        for change, label, new_entry in named:
            if not may_act():
                return
            _start_node(port, change, label, new_entry, self.settings)

    def advance(self, port: ClusterPort, node: NodeState) -> Phase | None:
        return advance(port, node, self.settings)


def _entries(snapshot: ClusterSnapshot, change: NodeChange) -> list[MigConfigEntry]:
    """The mig-parted entries that give every GPU of the node its target."""
    node = next(n for n in snapshot.nodes if n.name == change.node)
    models = {g.index: g.gpu_model for g in node.gpus}
    return node_entry([(g.index, models[g.index], g.target) for g in sorted(change.gpus, key=lambda g: g.index)])


def _read_config(port: ClusterPort) -> MigPartedConfig:
    text = port.read_mig_config()
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


def _start_node(
    port: ClusterPort, change: NodeChange, label: str, new_entry: bool, settings: ActuationSettings
) -> None:
    """Record the change on the node (the list of pods to evict included), then begin cordoning."""
    port.patch_node(
        change.node,
        annotations={
            PLAN: change.plan_id,
            PHASE: Phase.CORDONING,
            TARGET: label,
            EVICT: ",".join(sorted(change.evict)),
            EVICTED: "",
            ATTEMPTS: "0",
            EXPECTED: json.dumps(change.expected, sort_keys=True),
            DEADLINE: str(port.now() + settings.eviction_timeout_s),
            RETRY_AT: None,
            LABEL_AFTER: str(port.now() + settings.config_propagation_s) if new_entry else None,
        },
    )
    port.record_event("Node", change.node, EventReason.RECONFIGURATION_STARTED, f"plan {change.plan_id}: {label}")


def advance(port: ClusterPort, node: NodeState, settings: ActuationSettings) -> Phase | None:
    """Take the node one step further (as far as it can go now); returns its phase afterwards."""
    phase = phase_of(node)
    if phase is None or phase not in ACTIVE:
        return phase
    now = port.now()
    a = node.annotations
    if phase is Phase.CORDONING:
        if not node.unschedulable and CORDONED not in a:
            port.patch_node(node.name, annotations={CORDONED: "true"})
        port.set_unschedulable(node.name, True)
        return _enter(port, node.name, Phase.EVICTING, now + settings.eviction_timeout_s)
    if phase is Phase.EVICTING:
        return _evict_step(port, node, settings, now)
    if phase is Phase.LABELLING:
        if now < float(a.get(LABEL_AFTER) or 0):
            return Phase.LABELLING  # the new entry may not be in mig-manager's copy of the ConfigMap yet
        port.patch_node(node.name, labels={MIG_CONFIG_LABEL: a[TARGET]}, annotations={LABEL_AFTER: None})
        return _enter(port, node.name, Phase.APPLYING, now + settings.apply_timeout_s)
    if phase is Phase.APPLYING:
        return _apply_step(port, node, settings, now)
    return _verify_step(port, node, now)


def _enter(port: ClusterPort, node: str, phase: Phase, deadline: float) -> Phase:
    port.patch_node(node, annotations={PHASE: phase, DEADLINE: str(deadline), RETRY_AT: None})
    port.record_event("Node", node, EventReason.RECONFIGURATION_PHASE, f"phase {phase}")
    log.info("node=%s phase=%s", node, phase)
    return phase


def _listed(value: str) -> list[str]:
    return [item for item in value.split(",") if item]


def _evict_step(port: ClusterPort, node: NodeState, settings: ActuationSettings, now: float) -> Phase:
    a = node.annotations
    holding = {pod for gpu in node.gpus for pod in gpu.holders}
    evicted = set(_listed(a.get(EVICTED, "")))
    remaining = [p for p in _listed(a.get(EVICT, "")) if p in holding]
    if not remaining:
        return _enter(port, node.name, Phase.LABELLING, now + settings.apply_timeout_s)
    if now >= float(a[DEADLINE]):
        return _finish(port, node, Phase.ABANDONED, f"pods {', '.join(remaining)} could not be evicted in time")
    if now < float(a.get(RETRY_AT) or 0):
        return Phase.EVICTING
    blocked = 0
    for pod in remaining:
        if pod in evicted:
            continue  # asked once already (perhaps before a restart): never ask twice, wait for it to go
        outcome = _evict_once(port, node.name, pod, evicted)
        blocked += outcome is EvictionOutcome.BLOCKED
    if blocked:
        attempts = int(a.get(ATTEMPTS) or 0) + 1
        wait = settings.eviction_backoff_s * 2 ** min(attempts - 1, 6)
        port.patch_node(node.name, annotations={ATTEMPTS: str(attempts), RETRY_AT: str(now + wait)})
    return Phase.EVICTING


def _evict_once(port: ClusterPort, node: str, pod: str, evicted: set[str]) -> EvictionOutcome:
    """Mark, then ask. A 429 unmarks the pod (the API refused, nothing happened) so it is asked again later."""
    port.patch_node(node, annotations={EVICTED: ",".join(sorted(evicted | {pod}))})
    outcome = port.evict(pod)
    if outcome is EvictionOutcome.BLOCKED:
        port.patch_node(node, annotations={EVICTED: ",".join(sorted(evicted))})
        port.record_event(
            "Pod", pod, EventReason.EVICTION_BLOCKED, "a PodDisruptionBudget refused the eviction; will retry"
        )
    else:
        evicted.add(pod)
        port.record_event("Pod", pod, EventReason.EVICTED, f"evicted to reconfigure the MIG layout of node {node}")
    return outcome


def _apply_step(port: ClusterPort, node: NodeState, settings: ActuationSettings, now: float) -> Phase:
    a = node.annotations
    state = node.labels.get(MIG_STATE_LABEL)
    if node.labels.get(MIG_CONFIG_LABEL) != a[TARGET]:
        port.patch_node(node.name, labels={MIG_CONFIG_LABEL: a[TARGET]})
        return Phase.APPLYING
    if state == "success" and _advertises(node, a):
        return _enter(port, node.name, Phase.VERIFYING, now + settings.apply_timeout_s)
    if state == "failed":
        attempts = int(a.get(ATTEMPTS) or 0)
        if attempts >= settings.max_retries:
            return _finish(port, node, Phase.FAILED, f"mig-manager failed {attempts + 1} times on {a[TARGET]}")
        # a same-value relabel does nothing (spec §1.2): remove the label, then set it again
        port.patch_node(
            node.name, annotations={ATTEMPTS: str(attempts + 1), DEADLINE: str(now + settings.apply_timeout_s)}
        )
        port.patch_node(node.name, labels={MIG_CONFIG_LABEL: None})
        port.patch_node(node.name, labels={MIG_CONFIG_LABEL: a[TARGET]})
        port.record_event(
            "Node", node.name, EventReason.RECONFIGURATION_RETRY, f"mig-manager failed; retry {attempts + 1}"
        )
        return Phase.APPLYING
    if now >= float(a[DEADLINE]):
        return _finish(port, node, Phase.FAILED, f"mig-manager did not finish {a[TARGET]} in time (state {state})")
    return Phase.APPLYING


def _advertises(node: NodeState, a: dict[str, str]) -> bool:
    """The node's MIG resources are what the plan expects (stale zero-count keys ignored)."""
    expected = {k: v for k, v in json.loads(a.get(EXPECTED) or "{}").items() if v}
    actual = {
        k: v for k, v in node.allocatable.items() if v and (k.startswith(MIG_RESOURCE_PREFIX) or k == GPU_RESOURCE)
    }
    return actual == expected


def _verify_step(port: ClusterPort, node: NodeState, now: float) -> Phase:
    if _advertises(node, node.annotations):
        return _finish(port, node, Phase.DONE, "MIG layout applied and advertised")
    if now >= float(node.annotations[DEADLINE]):
        return _finish(port, node, Phase.FAILED, "the node does not advertise the planned MIG devices")
    return Phase.VERIFYING


def _finish(port: ClusterPort, node: NodeState, phase: Phase, message: str) -> Phase:
    """End the node's change: record the outcome, then uncordon if (and only if) migopt cordoned it."""
    port.patch_node(node.name, annotations={PHASE: phase, RETRY_AT: None})
    if node.annotations.get(CORDONED) == "true":
        port.set_unschedulable(node.name, False)
        port.patch_node(node.name, annotations={CORDONED: None})
    reason = {Phase.DONE: EventReason.RECONFIGURED, Phase.ABANDONED: EventReason.RECONFIGURATION_ABANDONED}.get(
        phase, EventReason.RECONFIGURATION_FAILED
    )
    port.record_event("Node", node.name, reason, message)
    log.info("node=%s phase=%s message=%r", node.name, phase, message)
    return phase
