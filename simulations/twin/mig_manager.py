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

Where releases differ (`MigManagerBehaviour.version`; the harshest, v0.15, by default), the twin follows the
release's code, in mig-parted (NVIDIA/mig-parted, read at the commits cited):

- An operand whose pods do not go (the host's `is_stuck`) is waited for `component_wait_s` (5 minutes), polled
  every second. The bash script of v0.12 ignores the timeout and carries on (`deployments/container/
  reconfigure-mig.sh@66bc07cd8655`, `kubectl wait --timeout=5m` unchecked). The Go port (v0.13.0 to v0.15.0:
  `pkg/mig/reconfigure/reconfigure.go@4a03974182d0` … `@e2d5ad1fc72b`, still so at main `@bd7160f43f16`)
  returns from `Run()` without `setState`: `pending` stays, the deploy labels stay paused, and the watch loop
  goes back to waiting for a label change, which it then acts on (spec §7.1).
- In the Go port the "do not restore on exit" flags are package variables, set by the first run that reaches
  the final restore and never reset in that process: from then on a run that fails after pausing writes
  `failed` but leaves the deploy labels at `paused-for-mig-change`, and the "already applied" shortcut does not
  touch them either, until a run succeeds in full or the pod restarts (spec §1.3, [derived from code]). The bash
  script ran as one process per run, so it always restored. A pod already running when the twin begins is
  taken to have applied its label itself (the flags set); a restarted pod starts with them clear.
- `nvidia.com/gpu.deploy.client` is paused and restored only by v0.15 (and only when the label exists).
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
    component_wait_s: float = Field(
        default=300.0,
        gt=0,
        description="how long a run waits for an operand's pods to go before giving up (reconfigure.go "
        "waitForPodsToBeDeleted and reconfigure-mig.sh's kubectl wait: 5 minutes)",
    )


MigManagerVersion = Literal["v0.12", "v0.13", "v0.14", "v0.15"]


class MigManagerBehaviour(BaseModel):
    """Which mig-manager release the twin's pods behave as, where releases differ (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: MigManagerVersion = Field(
        default="v0.15",
        description="v0.12: the bash script (restores operands on every failure, carries on after a timed-out "
        "wait); v0.13-v0.15: the Go port (a timed-out wait leaves `pending` and paused operands; after a full "
        "run, failures leave operands paused)",
    )

    @property
    def go_port(self) -> bool:
        """`pkg/mig/reconfigure` (v0.13.0 and later) rather than `reconfigure-mig.sh`."""
        return self.version != "v0.12"

    @property
    def pauses_client_label(self) -> bool:
        """v0.15.0 bounces third-party GPU clients through `nvidia.com/gpu.deploy.client`."""
        return self.version == "v0.15"


DEFAULT_BEHAVIOUR = MigManagerBehaviour()
_POLL_S = 1.0
"""reconfigure.go polls for the operand pods every second (`wait.PollUntilContextTimeout(ctx, time.Second, …)`)."""


class MigManagerHost(Protocol):
    """What a mig-manager pod reaches: its node, the ConfigMap, and the twin's records."""

    def node(self, name: str) -> TwinNode: ...

    def write_labels(self, node: str, patch: Mapping[str, str | None]) -> None: ...

    def read_mig_config(self) -> str | None: ...

    def is_stuck(self, node: str) -> bool:
        """The node's operand pods do not terminate (a fault): a run's wait for them does not end by itself."""
        ...

    def record_run(self, run: MigRun) -> None: ...

    def log(self, node: str, message: str) -> None: ...


_Item = tuple[Literal["mode", "config"], Entry, TwinGpu]


@dataclass
class _Run:
    value: str
    started_at: float
    saved: dict[str, str | None]
    went_pending: bool = False
    paused_at: float = 0.0
    entries: list[Entry] = field(default_factory=list)
    queue: list[_Item] = field(default_factory=list)
    created: int = 0  # GPU instances created so far (a GPU mig-parted rebuilds gets a new instance list)


class MigManager:
    """The mig-manager pod of one node."""

    def __init__(
        self,
        node: str,
        clock: SimClock,
        host: MigManagerHost,
        timings: MigManagerTimings,
        behaviour: MigManagerBehaviour = DEFAULT_BEHAVIOUR,
    ) -> None:
        self.node_name = node
        self._clock = clock
        self._host = host
        self._timings = timings
        self.behaviour = behaviour
        self._restores_on_exit = True  # reconfigure.go's `!NoRestartK8sDaemonsetsOnExit`, per process
        self._current = ""  # the informer's last recorded label value
        self._last_read = ""  # the value the worker last took
        self._waiting = False
        self._run: _Run | None = None
        self._generation = 0  # bumped on restart: callbacks of a killed pod do nothing

    @property
    def busy(self) -> bool:
        return self._run is not None

    def adopt(self) -> None:
        """A pod that was already running when the twin began: it has processed the current label and waits. It
        is taken to have applied that label itself, so a Go-port pod no longer restores operands on failure."""
        self._current = self._last_read = self._label()
        self._waiting = True
        self._restores_on_exit = not self.behaviour.go_port

    def start(self) -> None:
        """Pod (re)start: any run in flight is abandoned, and the current label is applied again (spec §1.2.1).
        A new process: its package-level flags are clear again."""
        self._generation += 1
        self._run = None
        self._restores_on_exit = True
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
        if labels.get(CLIENT_DEPLOY_LABEL) and self.behaviour.pauses_client_label:
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
        run.paused_at = self._clock.now
        self._host.log(self.node_name, "Waiting for the device-plugin to shutdown")
        self._after(min(self._timings.pause_s, self._timings.component_wait_s), self._wait_step)

    def _wait_step(self) -> None:
        """The operand pods went after `pause_s`, unless the node's are stuck: then poll until they go or the
        wait times out."""
        run = self._require_run()
        if not self._host.is_stuck(self.node_name):
            self._apply_start()
            return
        left = run.paused_at + self._timings.component_wait_s - self._clock.now
        if left > 0:
            self._after(min(_POLL_S, left), self._wait_step)
            return
        if self.behaviour.go_port:
            self._give_up("failed to wait for pods to be deleted: device-plugin pod did not shutdown: "
                          "context deadline exceeded")  # fmt: skip
            return
        self._host.log(self.node_name, "error: timed out waiting for the condition")  # kubectl wait; unchecked
        self._apply_start()

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
        self._finish("success", "applied", full=True)

    def _do_item(self) -> None:
        run = self._require_run()
        kind, entry, gpu = run.queue.pop(0)
        try:
            if kind == "mode":
                apply_mode(entry, gpu)
                lines: list[str] = []
            else:
                before = gpu.instances
                lines = apply_config(entry, gpu, self._host.node(self.node_name))
                if gpu.instances is not before:
                    run.created += len(gpu.instances)
        except MigPartedError as err:
            self._finish("failed", str(err))
            return
        for line in lines:
            self._host.log(self.node_name, line)
        self._next_item()

    def _finish(self, outcome: Literal["success", "failed"], message: str, full: bool = False) -> None:
        """`setState`: restore the deploy labels (`true` unless saved `false`), then write the state label. A
        `full` run restores them itself first (`restartKubernetesGPUClients`), which in the Go port also sets
        the process-wide flag that stops every later `setState` from restoring them."""
        run = self._require_run()
        if full or self._restores_on_exit:
            restore = {label: "false" if saved == "false" else "true" for label, saved in run.saved.items()}
            self._host.write_labels(self.node_name, restore)
        if full and self.behaviour.go_port:
            self._restores_on_exit = False
        self._host.write_labels(self.node_name, {MIG_STATE_LABEL: outcome})
        line = f"Successfully updated to MIG config: {run.value}" if outcome == "success" else f"Error: {message}"
        self._end(run, outcome, line)

    def _give_up(self, message: str) -> None:
        """The Go port's `return` without `setState`: no state written, the deploy labels left as they are. The
        run is recorded as failed (its log says `Error:`); the label still says `pending`."""
        self._end(self._require_run(), "failed", f"Error: {message}")

    def _end(self, run: _Run, outcome: Literal["success", "failed"], line: str) -> None:
        self._host.log(self.node_name, line)
        self._host.record_run(
            MigRun(
                node=self.node_name, config=run.value, started_at=run.started_at, finished_at=self._clock.now,
                outcome=outcome, went_pending=run.went_pending, message=line, instances_created=run.created,
            )
        )  # fmt: skip
        self._run = None
        self._get()

    def _require_run(self) -> _Run:
        if self._run is None:  # a step fired without a run: a bug in the twin, not user input
            raise RuntimeError(f"mig-manager on {self.node_name}: no run in progress")
        return self._run
