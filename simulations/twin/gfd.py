"""GPU Feature Discovery: the node labels describing GPUs and MIG devices, per strategy (spec §1.10).

GFD labels when its pod starts (the twin does not model the 60 s relabel loop: nothing changes GPUs while
GFD runs except a mig-manager run, which restarts it). Labels it set before and no longer sets are removed.
"""

from __future__ import annotations

from collections import Counter

from nvidia_protocol.labels import COUNT_LABEL, MIG_CAPABLE_LABEL, PRODUCT_LABEL, STRATEGY_LABEL, mig_count_label
from simulations.twin.device_plugin import single_layout
from simulations.twin.state import TwinNode

_MIG_PREFIX = "nvidia.com/mig-"


def gfd_labels(node: TwinNode) -> dict[str, str]:
    """The labels GFD would write for the node's current GPUs."""
    if not node.gpus:
        return {}
    product = node.gpus[0].gpu_model.gfd_products[0]
    labels = {MIG_CAPABLE_LABEL: "true", STRATEGY_LABEL: node.strategy}
    if node.strategy == "single":
        layout = single_layout(node)
        if layout.kind == "mig":
            labels |= {PRODUCT_LABEL: f"{product}-MIG-{layout.profile}", COUNT_LABEL: str(layout.devices)}
        elif layout.kind == "full":
            labels |= {PRODUCT_LABEL: product, COUNT_LABEL: str(layout.devices)}
        else:
            labels |= {PRODUCT_LABEL: f"{product}-MIG-INVALID", COUNT_LABEL: "0"}
        return labels
    labels |= {PRODUCT_LABEL: product, COUNT_LABEL: str(len(node.gpus))}
    counts = Counter(i.profile for g in node.gpus if g.mig_enabled for i in g.instances)
    for profile, count in sorted(counts.items()):
        labels[mig_count_label(profile)] = str(count)
    return labels


class FeatureDiscovery:
    """One node's GFD pod: remembers which labels it owns so a relabel can drop the ones gone."""

    def __init__(self) -> None:
        self.running = False
        self.owned: set[str] = set()

    def start(self, node: TwinNode) -> dict[str, str | None]:
        """Start and label: returns the label patch (None removes a label it set before)."""
        self.running = True
        self.owned |= {k for k in node.labels if k.startswith(_MIG_PREFIX) and k.endswith(".count")}
        fresh = gfd_labels(node)
        patch: dict[str, str | None] = {k: None for k in sorted(self.owned - fresh.keys())}
        patch |= {k: v for k, v in fresh.items() if node.labels.get(k) != v}
        self.owned = set(fresh)
        return patch

    def stop(self) -> None:
        """The pod is gone; the labels it wrote stay on the node until it labels again."""
        self.running = False
