"""The Eviction API's answer for a pod: 404 when it is gone, 429 when a PodDisruptionBudget forbids it.

As in Kubernetes, a pod that is not running (pending) or already terminating may always be evicted without
consulting budgets; a running pod may be evicted only if every budget selecting it keeps at least
`min_available` healthy (running, not terminating) pods afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable

from optimizer.controller.port import EvictionOutcome
from simulations.twin.state import PodDisruptionBudget, PodPhase, TwinPod


def selects(pdb: PodDisruptionBudget, pod: TwinPod) -> bool:
    """Budgets select by name; a re-created pod keeps its lineage's origin name, as it keeps its labels."""
    return pod.name in pdb.pods or pod.origin in pdb.pods


def _healthy(pod: TwinPod) -> bool:
    return pod.active and pod.phase == PodPhase.RUNNING and not pod.terminating


def eviction_outcome(
    pod: TwinPod | None, pods: Iterable[TwinPod], pdbs: Iterable[PodDisruptionBudget]
) -> EvictionOutcome:
    if pod is None or not pod.active:
        return EvictionOutcome.GONE
    if not _healthy(pod):
        return EvictionOutcome.EVICTED
    everyone = list(pods)
    for pdb in pdbs:
        if not selects(pdb, pod):
            continue
        healthy = sum(1 for p in everyone if _healthy(p) and selects(pdb, p))
        if healthy - 1 < pdb.min_available:
            return EvictionOutcome.BLOCKED
    return EvictionOutcome.EVICTED
