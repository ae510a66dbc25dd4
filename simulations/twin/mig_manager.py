"""One node's mig-manager: the label watch loop of spec §1.2 and the reconfiguration run of §1.3, timed.

The watch loop mirrors mig-parted's `SyncableMigConfig`: the informer records a changed label value; a
non-empty one wakes the idle worker; after a run the worker compares the latest value with the one it just
processed and runs again only if they differ. Hence a same-value relabel does nothing, changes during a run
coalesce, removal while idle does nothing, removal during a run makes the next run use an empty name, and
"remove, then set again" retries.

A run: after `assert_s`, a bad file or unknown name fails (never `pending`), an applied config succeeds at
once; otherwise `pending`, operands paused, `pause_s` for them to go, then mig-parted's apply with
`apply_per_gpu_s` per GPU it works on, then deploy labels restored and the state written. Operands (and so
the device plugin's resources) come back `restore_s` after the labels, which `operands.py` models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from nvidia_protocol.labels import CLIENT_DEPLOY_LABEL, DEPLOY_LABELS, MIG_CONFIG_LABEL, MIG_STATE_LABEL, PAUSED
from simulations.twin.clock import SimClock
from simulations.twin.mig_parted import (
    MigPartedError,
    apply_config,
    apply_mode,
    is_applied,
    mode_change_needed,
    needs_config,
    select_config,
    walk,
)
from simulations.twin.mig_parted_reader import Entry
from simulations.twin.state import MigRun, TwinGpu, TwinNode

WAITING = f"Waiting for change to '{MIG_CONFIG_LABEL}' label"


class MigManagerTimings(BaseModel):
    """Simulated seconds for each part of a run (spec §6: operand churn dominates, NVML work is seconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    assert_s: float = Field(default=10.0, ge=0, description="validate the file and assert (ends the shortcut)")
    pause_s: float = Field(default=30.0, ge=0, description="operand pods terminate after their labels pause")
    apply_per_gpu_s: float = Field(default=10.0, ge=0, description="mig-parted work on each GPU it changes")
    restore_s: float = Field(default=30.0, ge=0, description="operand pods start after their labels are restored")
    config_refresh_s: float = Field(
        default=0.0,
        ge=0,
        description="mig-manager reads the ConfigMap through a volume kubelet refreshes periodically (spec §1.7): "
        "a write reaches its runs this long later (0: at once)",
    )


class MigManagerHost(Protocol):
    """What a mig-manager pod reaches: its node, the ConfigMap, and the twin's records."""

    def node(self, name: str) -> TwinNode: ...

    def write_labels(self, node: str, patch: Mapping[str, str | None]) -> None: ...

    def read_mig_config(self) -> str | None: ...

    def is_stuck(self, node: str) -> bool: ...

    def record_run(self, run: MigRun) -> None: ...

    def log(self, node: str, message: str) -> None: ...


_Item = tuple[Literal["mode", "config"], Entry, TwinGpu]


@dataclass
class _Run:
    value: str
    started_at: float
    saved: dict[str, str | None]
    went_pending: bool = False
    entries: list[Entry] = field(default_factory=list)
    queue: list[_Item] = field(default_factory=list)


class MigManager:
    """The mig-manager pod of one node."""

    def __init__(self, node: str, clock: SimClock, host: MigManagerHost, timings: MigManagerTimings) -> None:
        self.node_name = node
        self._clock = clock
        self._host = host
        self._timings = timings
        self._current = ""  # the informer's last recorded label value
        self._last_read = ""  # the value the worker last took
        self._waiting = False
        self._run: _Run | None = None
        self._generation = 0  # bumped on restart: callbacks of a killed pod do nothing

    @property
    def busy(self) -> bool:
        return self._run is not None

    def adopt(self) -> None:
        """A pod that was already running when the twin began: it has processed the current label and waits."""
        self._current = self._last_read = self._label()
        self._waiting = True

    def start(self) -> None:
        """Pod (re)start: any run in flight is abandoned, and the current label is applied again (spec §1.2.1)."""
        self._generation += 1
        self._run = None
        self._current = self._label()
        self._last_read = ""
        self._waiting = False
        self._get()

    def observe(self, value: str) -> None:
        """The informer saw `nvidia.com/mig.config` change to `value` ("" when removed)."""
        if value == self._current:
            return
        self._current = value
        if value and self._waiting:
            self._waiting = False
            self._last_read = value
            self._begin(value)

    def _label(self) -> str:
        return self._host.node(self.node_name).labels.get(MIG_CONFIG_LABEL, "")

    def _get(self) -> None:
        """The worker's `Get()`: block if nothing changed since the last value it took, else run the new one."""
        self._host.log(self.node_name, WAITING)
        if self._last_read == self._current:
            self._waiting = True
            return
        self._last_read = self._current
        self._begin(self._current)

    def _after(self, delay: float, step: Callable[[], None]) -> None:
        generation = self._generation

        def fire() -> None:
            if generation == self._generation:
                step()

        self._clock.call_in(delay, fire)

    def _begin(self, value: str) -> None:
        labels = self._host.node(self.node_name).labels
        saved = {label: labels.get(label) for label in DEPLOY_LABELS}
        if CLIENT_DEPLOY_LABEL in labels:
            saved[CLIENT_DEPLOY_LABEL] = labels[CLIENT_DEPLOY_LABEL]
        self._run = _Run(value=value, started_at=self._clock.now, saved=saved)
        self._host.log(self.node_name, f"Updating to MIG config: {value}")
        self._after(self._timings.assert_s, self._assert_step)

    def _assert_step(self) -> None:
        run = self._require_run()
        node = self._host.node(self.node_name)
        try:
            run.entries = select_config(self._host.read_mig_config(), run.value)
        except MigPartedError as err:
            self._finish("failed", str(err))
            return
        if is_applied(run.entries, node):
            self._host.log(self.node_name, "Selected MIG configuration currently applied")
            self._finish("success", "already applied")
            return
        run.went_pending = True
        self._host.write_labels(self.node_name, {MIG_STATE_LABEL: "pending"})
        pause = {label: PAUSED for label, saved in run.saved.items() if saved != "false"}
        self._host.write_labels(self.node_name, pause)
        if self._host.is_stuck(self.node_name):
            self._host.log(self.node_name, "Waiting for operand pods to be deleted (never finishes: stuck)")
            return
        self._after(self._timings.pause_s, self._apply_start)

    def _apply_start(self) -> None:
        run = self._require_run()
        pairs = walk(run.entries, self._host.node(self.node_name))
        if mode_change_needed(pairs):
            run.queue = [("mode", entry, gpu) for entry, gpu in pairs]
        run.queue += [("config", entry, gpu) for entry, gpu in pairs]
        self._host.log(self.node_name, "Applying the selected MIG config to the node")
        self._next_item()

    def _next_item(self) -> None:
        run = self._require_run()
        node = self._host.node(self.node_name)
        while run.queue:
            kind, entry, gpu = run.queue[0]
            untouched = entry.mig_enabled == gpu.mig_enabled and not needs_config(entry, gpu, node)
            if kind == "config" and untouched:
                run.queue.pop(0)  # equal map: skipped, its workloads survive (spec §2.4 phase B step 3)
                continue
            self._after(self._timings.apply_per_gpu_s, self._do_item)
            return
        self._finish("success", "applied")

    def _do_item(self) -> None:
        run = self._require_run()
        kind, entry, gpu = run.queue.pop(0)
        try:
            if kind == "mode":
                apply_mode(entry, gpu)
                lines: list[str] = []
            else:
                lines = apply_config(entry, gpu, self._host.node(self.node_name))
        except MigPartedError as err:
            self._finish("failed", str(err))
            return
        for line in lines:
            self._host.log(self.node_name, line)
        self._next_item()

    def _finish(self, outcome: Literal["success", "failed"], message: str) -> None:
        """`setState`: restore the deploy labels (`true` unless saved `false`), then write the state label."""
        run = self._require_run()
        restore = {label: "false" if saved == "false" else "true" for label, saved in run.saved.items()}
        self._host.write_labels(self.node_name, restore)
        self._host.write_labels(self.node_name, {MIG_STATE_LABEL: outcome})
        line = f"Successfully updated to MIG config: {run.value}" if outcome == "success" else f"Error: {message}"
        self._host.log(self.node_name, line)
        self._host.record_run(
            MigRun(
                node=self.node_name, config=run.value, started_at=run.started_at, finished_at=self._clock.now,
                outcome=outcome, went_pending=run.went_pending, message=line,
            )
        )  # fmt: skip
        self._run = None
        self._get()

    def _require_run(self) -> _Run:
        if self._run is None:  # a step fired without a run: a bug in the twin, not user input
            raise RuntimeError(f"mig-manager on {self.node_name}: no run in progress")
        return self._run
