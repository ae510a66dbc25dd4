"""Why a running pod may not be evicted: one typed reason per pod, kept from where it is decided (the eviction
rules, the layout sources' stand-ins, a snapshot file) to where a person reads it (unplaced reasons, metrics).

It lives in the solver layer because the snapshot's `RunningPod` carries it; the rules that assign the
Kubernetes reasons are in `optimizer.controller.eviction`.
"""

from __future__ import annotations

from enum import StrEnum


class Protection(StrEnum):
    """The reason a running pod is never evicted. Declaration order is the order reasons are reported in."""

    DAEMONSET = "daemonset"  # owned by a DaemonSet: it would come straight back on the same node
    MIRROR_POD = "mirror-pod"  # a static pod's mirror: the API cannot evict what the kubelet runs from a file
    DRA_CLAIM = "dra-claim"  # holds devices through a ResourceClaim: their driver, not migopt, owns those GPUs
    OPTED_OUT = "opted-out"  # annotated `migopt.io/evictable: "false"`
    PDB = "pdb"  # a PodDisruptionBudget covering it allows no disruption now
    UNATTRIBUTED = "unattributed"  # a stand-in for a busy device whose pod is unknown (its GPU must stay as it is)
    GUESSED = "guessed"  # its device is only guessed: evicting it might not free the GPU the plan counts on
    UNSPECIFIED = "unspecified"  # a snapshot says `evictable: false` and gives no reason
