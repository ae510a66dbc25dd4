"""The NVIDIA device plugin as kubelet sees it: which MIG devices a node advertises, per strategy (spec §3).

The plugin enumerates devices when it starts. While it is stopped (its deploy label paused by mig-manager)
kubelet keeps capacity but drops allocatable to 0. A resource once registered and no longer advertised
stays on the node at 0, never deleted (spec §3.3; the twin skips kubelet's 5-minute grace, which only
changes capacity, not allocatable).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from simulations.twin.state import DeviceRef, TwinNode, device_ref
from solver.profiles import resource_name
from solver.snapshot import GPU_RESOURCE


class SingleLayout(BaseModel):
    """What the `single` strategy makes of a node: MIG devices of one type, whole GPUs, or an invalid mix."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["mig", "full", "invalid"]
    profile: str | None = None
    devices: int = 0


def single_layout(node: TwinNode) -> SingleLayout:
    """Spec §1.10/§3: valid only when every GPU is MIG-enabled with devices of one identical type, or none is."""
    if not node.gpus:
        return SingleLayout(kind="invalid")
    if not any(g.mig_enabled for g in node.gpus):
        return SingleLayout(kind="full", devices=len(node.gpus))
    if not all(g.mig_enabled and g.instances for g in node.gpus):
        return SingleLayout(kind="invalid")
    types = {(g.model, i.profile) for g in node.gpus for i in g.instances}
    if len(types) != 1:
        return SingleLayout(kind="invalid")
    (_, profile) = next(iter(types))
    return SingleLayout(kind="mig", profile=profile, devices=sum(len(g.instances) for g in node.gpus))


class Advertisement(BaseModel):
    """Resource counts the plugin registers and the device ids behind the MIG ones."""

    model_config = ConfigDict(frozen=True)

    resources: dict[str, int]
    devices: frozenset[DeviceRef]


def _mig_devices(node: TwinNode) -> frozenset[DeviceRef]:
    return frozenset(device_ref(g.index, i.start, i.profile) for g in node.gpus if g.mig_enabled for i in g.instances)


def advertisement(node: TwinNode) -> Advertisement:
    """What a freshly started plugin registers on this node."""
    if node.strategy == "single":
        layout = single_layout(node)
        devices = _mig_devices(node) if layout.kind == "mig" else frozenset()
        return Advertisement(resources={GPU_RESOURCE: layout.devices}, devices=devices)
    devices = _mig_devices(node)
    counts = Counter(resource_name(d.profile) for d in devices)
    whole = sum(1 for g in node.gpus if not g.mig_enabled)
    return Advertisement(resources={GPU_RESOURCE: whole, **dict(sorted(counts.items()))}, devices=devices)


class DevicePlugin:
    """One node's plugin and kubelet's device-manager record of it."""

    def __init__(self, registered: dict[str, int] | None = None) -> None:
        self.running = False
        self.devices: frozenset[DeviceRef] = frozenset()
        self.capacity: dict[str, int] = dict(registered or {})
        self.allocatable: dict[str, int] = {k: 0 for k in self.capacity}
        self.version = 0  # bumped on every (re)registration or stop
        self.on_change: Callable[[], None] | None = None  # told after every bump (the twin's scheduler listens)

    def _changed(self) -> None:
        self.version += 1
        if self.on_change is not None:
            self.on_change()

    def start(self, node: TwinNode) -> None:
        """Enumerate the node's devices and register them; resources it no longer has drop to 0."""
        ad = advertisement(node)
        self.capacity = {k: 0 for k in self.capacity} | ad.resources
        self.allocatable = dict(self.capacity)
        self.devices = ad.devices
        self.running = True
        self._changed()

    def stop(self) -> None:
        """The plugin pod is gone: its devices are unhealthy, capacity kept, allocatable 0."""
        self.running = False
        self.devices = frozenset()
        self.allocatable = {k: 0 for k in self.capacity}
        self._changed()
