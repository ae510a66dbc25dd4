"""Every `nvidia.com/*` node label the GPU Operator's components read and write (spec §1.1, §1.2, §1.3, §1.10).

The controller and the twin both spell them from here. The label names the planner itself reads off a node
(`gpu.product`, `mig.strategy`) live in `solver.snapshot`, the lowest layer, and are re-exported here.
"""

from __future__ import annotations

from solver.snapshot import PRODUCT_LABEL, STRATEGY_LABEL

__all__ = [
    "CLIENT_DEPLOY_LABEL",
    "COUNT_LABEL",
    "DCGM_EXPORTER_DEPLOY_LABEL",
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

MIG_CONFIG_LABEL = "nvidia.com/mig.config"
"""The mig-parted config name mig-manager applies (spec §1.2)."""
MIG_STATE_LABEL = "nvidia.com/mig.config.state"
"""mig-manager's progress: `pending`, `success`, `failed` (spec §1.2)."""
MIG_CAPABLE_LABEL = "nvidia.com/mig.capable"
COUNT_LABEL = "nvidia.com/gpu.count"

DEPLOY_PREFIX = "nvidia.com/gpu.deploy."
DEVICE_PLUGIN_DEPLOY_LABEL = DEPLOY_PREFIX + "device-plugin"
GFD_DEPLOY_LABEL = DEPLOY_PREFIX + "gpu-feature-discovery"
DCGM_EXPORTER_DEPLOY_LABEL = DEPLOY_PREFIX + "dcgm-exporter"
DEPLOY_LABELS = (
    DEVICE_PLUGIN_DEPLOY_LABEL,
    GFD_DEPLOY_LABEL,
    DCGM_EXPORTER_DEPLOY_LABEL,
    DEPLOY_PREFIX + "dcgm",
    DEPLOY_PREFIX + "nvsm",
)
"""The five operand labels mig-manager pauses and restores on every run (spec §1.3 steps 7 and 15)."""
CLIENT_DEPLOY_LABEL = DEPLOY_PREFIX + "client"
"""Paused and restored only when it already exists (v0.15.0+)."""
OPERATOR_DEFAULTED_LABELS = DEPLOY_LABELS[:4]
"""The operator sets these to `true` when absent (nvsm it does not: it appears after the first run)."""
PAUSED = "paused-for-mig-change"


def mig_count_label(profile: str) -> str:
    """GFD's mixed-strategy count label: `nvidia.com/mig-1g.10gb.me.count` for `1g.10gb+me`."""
    return f"nvidia.com/mig-{profile.replace('+', '.')}.count"
