"""Carrying one node's part of a plan out through the mig-manager label protocol, crash-safely.

    cordoning → evicting → labelling → applying → verifying → done
                    ↘ abandoned (a PodDisruptionBudget kept refusing past the deadline)
                                          ↘ failed (mig-manager `failed` after the retries, or stuck)

Every step is recorded in the node's annotations *before* the action it announces, so a controller killed at
any point and restarted resumes from the annotations alone: it never evicts a pod twice (a pod is marked before
its eviction is asked for), never evicts a pod the plan did not name (the list is written when the node's
change starts), and never leaves a node cordoned (it records that it cordoned before cordoning, and every end
state uncordons what it cordoned). `advance` is idempotent: call it on every reconcile tick.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum

from pydantic import BaseModel, Field

from nvidia_protocol.labels import MIG_CONFIG_LABEL, MIG_STATE_LABEL
from optimizer.controller.port import ClusterPort, EvictionOutcome
from solver.profiles import MIG_RESOURCE_PREFIX
from solver.snapshot import GPU_RESOURCE, NodeState

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


class Phase(StrEnum):
    CORDONING = "cordoning"
    EVICTING = "evicting"
    LABELLING = "labelling"
    APPLYING = "applying"
    VERIFYING = "verifying"
    DONE = "done"
    ABANDONED = "abandoned"
    FAILED = "failed"


ACTIVE = {Phase.CORDONING, Phase.EVICTING, Phase.LABELLING, Phase.APPLYING, Phase.VERIFYING}


class ActuationSettings(BaseModel):
    eviction_timeout_s: float = Field(default=600.0, gt=0, description="give up on a node's drain after this")
    eviction_backoff_s: float = Field(default=10.0, gt=0, description="first wait after a 429, doubled each time")
    apply_timeout_s: float = Field(default=900.0, gt=0, description="a mig-manager run stuck longer than this fails")
    max_retries: int = Field(default=2, ge=0, description="relabel retries after mig-manager reports failed")
    config_propagation_s: float = Field(
        default=90.0,
        ge=0,
        description="wait this long after writing a new config entry before a label names it: mig-manager reads "
        "the ConfigMap through a volume that kubelet refreshes only every sync period plus cache TTL (spec §1.7)",
    )


class NodeChange(BaseModel):
    """One node's part of a plan: the config to select, who to evict, what the node must advertise after."""

    node: str
    plan_id: str
    config_name: str
    evict: list[str]
    expected: dict[str, int]  # MIG resource -> allocatable count once applied
    new_entry: bool = False  # the config entry was just written: wait for it to reach mig-manager's volume


def phase_of(node: NodeState) -> Phase | None:
    value = node.annotations.get(PHASE, "")
    return Phase(value) if value in {p.value for p in Phase} else None


def is_active(node: NodeState) -> bool:
    return phase_of(node) in ACTIVE


def start(port: ClusterPort, change: NodeChange, settings: ActuationSettings) -> None:
    """Record the change on the node (the list of pods to evict included), then begin cordoning."""
    port.patch_node(
        change.node,
        annotations={
            PLAN: change.plan_id,
            PHASE: Phase.CORDONING,
            TARGET: change.config_name,
            EVICT: ",".join(sorted(change.evict)),
            EVICTED: "",
            ATTEMPTS: "0",
            EXPECTED: json.dumps(change.expected, sort_keys=True),
            DEADLINE: str(port.now() + settings.eviction_timeout_s),
            RETRY_AT: None,
            LABEL_AFTER: str(port.now() + settings.config_propagation_s) if change.new_entry else None,
        },
    )
    port.record_event("Node", change.node, "MigReconfigurationStarted", f"plan {change.plan_id}: {change.config_name}")


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
    port.record_event("Node", node, "MigReconfigurationPhase", f"phase {phase}")
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
        port.record_event("Pod", pod, "MigEvictionBlocked", "a PodDisruptionBudget refused the eviction; will retry")
    else:
        evicted.add(pod)
        port.record_event("Pod", pod, "MigEvicted", f"evicted to reconfigure the MIG layout of node {node}")
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
        port.record_event("Node", node.name, "MigReconfigurationRetry", f"mig-manager failed; retry {attempts + 1}")
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
    reason = {Phase.DONE: "MigReconfigured", Phase.ABANDONED: "MigReconfigurationAbandoned"}.get(
        phase, "MigReconfigurationFailed"
    )
    port.record_event("Node", node.name, reason, message)
    log.info("node=%s phase=%s message=%r", node.name, phase, message)
    return phase
