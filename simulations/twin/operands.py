"""The GPU Operator's per-node operand DaemonSets that matter to scheduling: device plugin and GFD.

Each runs while its `nvidia.com/gpu.deploy.<operand>` label is exactly `true` (spec §1.5): a paused label
stops it at once; a label back at `true` starts it after `start_delay_s` (pod start-up), and only then does
the node advertise devices again and carry fresh GFD labels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

from nvidia_protocol.labels import DEVICE_PLUGIN_DEPLOY_LABEL, GFD_DEPLOY_LABEL
from simulations.twin.clock import EventHandle, SimClock
from simulations.twin.device_plugin import DevicePlugin
from simulations.twin.gfd import FeatureDiscovery
from simulations.twin.state import TwinNode

LabelWriter = Callable[[str, Mapping[str, str | None]], None]
_ORDER = (GFD_DEPLOY_LABEL, DEVICE_PLUGIN_DEPLOY_LABEL)
"""GFD first: when both come up at the same instant, the product label is fresh before devices appear."""


class NodeOperands:
    """One node's device plugin and GFD pods, following their deploy labels."""

    def __init__(self, node: TwinNode, clock: SimClock, start_delay_s: float, write_labels: LabelWriter) -> None:
        self._node = node
        self._clock = clock
        self._delay = start_delay_s
        self._write = write_labels
        self.plugin = DevicePlugin()
        self.gfd = FeatureDiscovery()
        self._starting: dict[str, EventHandle] = {}

    def register_stale(self, resources: Mapping[str, int]) -> None:
        """Resources the node had registered before the twin began (they stay, at 0 when no longer advertised)."""
        for key in resources:
            self.plugin.capacity.setdefault(key, 0)
            self.plugin.allocatable.setdefault(key, 0)

    def boot(self) -> None:
        """Bring up at once whatever the labels allow (the cluster was running before the twin started)."""
        if self._wanted(DEVICE_PLUGIN_DEPLOY_LABEL):
            self.plugin.start(self._node)
        if self._wanted(GFD_DEPLOY_LABEL):
            self._start_gfd()

    def _wanted(self, label: str) -> bool:
        return self._node.labels.get(label) == "true"

    def _start_gfd(self) -> None:
        patch = self.gfd.start(self._node)
        if patch:
            self._write(self._node.name, patch)

    def _start(self, label: str) -> None:
        self._starting.pop(label, None)
        if label == DEVICE_PLUGIN_DEPLOY_LABEL:
            self.plugin.start(self._node)
        else:
            self._start_gfd()

    def _running(self, label: str) -> bool:
        return self.plugin.running if label == DEVICE_PLUGIN_DEPLOY_LABEL else self.gfd.running

    def _stop(self, label: str) -> None:
        handle = self._starting.pop(label, None)
        if handle is not None:
            handle.cancel()
        if label == DEVICE_PLUGIN_DEPLOY_LABEL:
            self.plugin.stop()
        else:
            self.gfd.stop()

    def sync(self) -> None:
        """React to the node's current deploy labels (called after they change)."""
        for label in _ORDER:
            if not self._wanted(label):
                if self._running(label) or label in self._starting:
                    self._stop(label)
            elif not self._running(label) and label not in self._starting:
                self._starting[label] = self._clock.call_in(self._delay, partial(self._start, label))

    def restart(self) -> None:
        """Roll both pods (e.g. after a strategy change): down now, up after the start delay if still wanted."""
        for label in _ORDER:
            self._stop(label)
        self.sync()

    def restart_plugin(self, start_delay_s: float) -> None:
        """Delete the device plugin's pod alone (what nos's MIG agent does after changing a layout): its devices go
        now; its DaemonSet's new pod enumerates the GPUs again and registers after `start_delay_s`, if its deploy
        label still wants it. GFD keeps running."""
        label = DEVICE_PLUGIN_DEPLOY_LABEL
        self._stop(label)
        if self._wanted(label):
            self._starting[label] = self._clock.call_in(start_delay_s, partial(self._start, label))
