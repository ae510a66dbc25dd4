"""Which running pods the controller may evict to reconfigure a GPU: an ordered list of small rules.

Every source of running pods (the Kubernetes adapter, the twin's API facade) describes a pod as an
`EvictionCandidate` and asks `eviction_verdict`, so they agree on the same pod. Each rule looks at one thing and
returns `ALLOWED` or a blocked verdict with its typed `Protection` and a one-line detail; the first rule that
blocks decides. Adding a rule is one function here and one entry in `EVICTION_RULES` (plus, for a new kind of
reason, one `Protection` value in `solver.protection`).

Pods that are evictable here may still be kept by the plan's policy (`PlanPolicy.may_evict`: priority at or above
`protect_priority`), and the Eviction API may still refuse a drain a budget blocks later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict

from solver.protection import Protection

NOT_EVICTABLE_ANNOTATION = "migopt.io/evictable"  # "false": never evict this pod to reconfigure a GPU
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"  # the kubelet's mark on a static pod's API mirror


class EvictionCandidate(BaseModel):
    """What the rules know of a running pod, whatever source it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    owner_kinds: frozenset[str] = frozenset()
    annotations: dict[str, str] = {}
    blocking_budget: str | None = None  # a PodDisruptionBudget selecting the pod that allows no disruption now


class EvictionVerdict(BaseModel):
    """Allowed (`protection` None) or blocked, with the reason as a type and as one line for a person."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protection: Protection | None = None
    detail: str = ""

    @property
    def allowed(self) -> bool:
        return self.protection is None


ALLOWED = EvictionVerdict()
EvictionRule = Callable[[EvictionCandidate], EvictionVerdict]


def _blocked(protection: Protection, detail: str) -> EvictionVerdict:
    return EvictionVerdict(protection=protection, detail=detail)


def daemonset_owned(pod: EvictionCandidate) -> EvictionVerdict:
    """Its DaemonSet would re-create it on the same node at once, holding the same kind of device."""
    if "DaemonSet" in pod.owner_kinds:
        return _blocked(Protection.DAEMONSET, "owned by a DaemonSet, which would re-create it on the same node")
    return ALLOWED


def static_pod(pod: EvictionCandidate) -> EvictionVerdict:
    """A mirror pod only reflects what the kubelet runs from a manifest file: evicting it stops nothing."""
    if MIRROR_ANNOTATION in pod.annotations:
        return _blocked(Protection.MIRROR_POD, f"a static pod (annotated {MIRROR_ANNOTATION}); the kubelet runs it")
    return ALLOWED


def opted_out(pod: EvictionCandidate) -> EvictionVerdict:
    """The owner said so: anything but a case-insensitive "false" leaves the pod evictable."""
    if pod.annotations.get(NOT_EVICTABLE_ANNOTATION, "true").lower() == "false":
        return _blocked(Protection.OPTED_OUT, f'annotated {NOT_EVICTABLE_ANNOTATION}: "false"')
    return ALLOWED


def budget_exhausted(pod: EvictionCandidate) -> EvictionVerdict:
    """The Eviction API would refuse until the budget recovers: planning around the pod beats a stuck drain."""
    if pod.blocking_budget is not None:
        return _blocked(Protection.PDB, f"disruption budget {pod.blocking_budget} allows no disruption now")
    return ALLOWED


EVICTION_RULES: list[EvictionRule] = [daemonset_owned, static_pod, opted_out, budget_exhausted]


def eviction_verdict(pod: EvictionCandidate, rules: Sequence[EvictionRule] = EVICTION_RULES) -> EvictionVerdict:
    """The first rule that blocks the pod decides; `ALLOWED` when none does."""
    for rule in rules:
        verdict = rule(pod)
        if not verdict.allowed:
            return verdict
    return ALLOWED
