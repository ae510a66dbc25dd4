"""Node label names the twin's GPU Operator components read and write (spec §1.1, §1.10).

Kept in one place so the mig-manager, the operand DaemonSets and GFD agree on spelling.
"""

from __future__ import annotations

from optimizer.controller.port import MIG_CONFIG_LABEL, MIG_STATE_LABEL
from solver.snapshot import PRODUCT_LABEL, STRATEGY_LABEL

__all__ = [
    "CLIENT_DEPLOY_LABEL",
    "COUNT_LABEL",
    "DEPLOY_LABELS",
    "DEVICE_PLUGIN_DEPLOY_LABEL",
    "GFD_DEPLOY_LABEL",
    "MIG_CAPABLE_LABEL",
    "MIG_CONFIG_LABEL",
    "MIG_STATE_LABEL",
    "OPERATOR_DEFAULTED_LABELS",
    "PAUSED",
    "PRODUCT_LABEL",
    "STRATEGY_LABEL",
    "mig_count_label",
]

DEPLOY_PREFIX = "nvidia.com/gpu.deploy."
DEVICE_PLUGIN_DEPLOY_LABEL = DEPLOY_PREFIX + "device-plugin"
GFD_DEPLOY_LABEL = DEPLOY_PREFIX + "gpu-feature-discovery"
DEPLOY_LABELS = (
    DEVICE_PLUGIN_DEPLOY_LABEL,
    GFD_DEPLOY_LABEL,
    DEPLOY_PREFIX + "dcgm-exporter",
    DEPLOY_PREFIX + "dcgm",
    DEPLOY_PREFIX + "nvsm",
)
"""The five operand labels mig-manager pauses and restores on every run (spec §1.3 steps 7 and 15)."""
CLIENT_DEPLOY_LABEL = DEPLOY_PREFIX + "client"
"""Paused and restored only when it already exists (v0.15.0+)."""
OPERATOR_DEFAULTED_LABELS = DEPLOY_LABELS[:4]
"""The operator sets these to `true` when absent (nvsm it does not: it appears after the first run)."""
PAUSED = "paused-for-mig-change"

COUNT_LABEL = "nvidia.com/gpu.count"
MIG_CAPABLE_LABEL = "nvidia.com/mig.capable"


def mig_count_label(profile: str) -> str:
    """GFD's mixed-strategy count label: `nvidia.com/mig-1g.10gb.me.count` for `1g.10gb+me`."""
    return f"nvidia.com/mig-{profile.replace('+', '.')}.count"
