"""`Twin`: a simulated Kubernetes GPU cluster with the NVIDIA GPU Operator, behind the controller's ClusterPort.

It composes the parts: nodes and pods (`state`, `workload`), one mig-manager per node (`mig_manager`), the
device plugin and GFD per node (`operands`), the scheduler (`scheduler`), the Eviction API (`evictions`),
all on one simulated clock (`clock`). Label writes, whoever makes them, go through one place that feeds the
watchers: `nvidia.com/mig.config` to the node's mig-manager, deploy labels to its operands. The scheduler
runs after every clock event and after every call that changes the cluster. Given the same snapshot, calls
and seed, a twin behaves identically.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from functools import partial
from types import MappingProxyType
from typing import Literal

from nvidia_protocol.labels import CLIENT_DEPLOY_LABEL, DEPLOY_LABELS, MIG_CONFIG_LABEL, MIG_STATE_LABEL
from optimizer.controller.port import ClusterPort, EvictionOutcome
from simulations.twin.clock import SimClock
from simulations.twin.convert import SnapshotCache, load_pods, node_from_state, registered_resources, to_snapshot
from simulations.twin.evictions import eviction_outcome
from simulations.twin.instances import create, destroy
from simulations.twin.mig_manager import DEFAULT_BEHAVIOUR, MigManager, MigManagerBehaviour, MigManagerTimings
from simulations.twin.operands import NodeOperands
from simulations.twin.scheduler import PodScheduler, Scheduler
from simulations.twin.state import (
    DeviceRef,
    EvictionRecord,
    LabelChange,
    LogLine,
    MigRun,
    PodDisruptionBudget,
    PodPhase,
    PodSpec,
    RecordedEvent,
    SizedRequest,
    Strategy,
    TwinNode,
    TwinPod,
)
from simulations.twin.workload import PodStore
from solver.demand import Demand
from solver.snapshot import ClusterSnapshot, NodeSelectorTerm, Taint, Toleration

DEFAULT_TIMINGS = MigManagerTimings()
_NO_CHANGES: Mapping[str, str | None] = MappingProxyType({})
_OPERAND_LABELS = frozenset((*DEPLOY_LABELS, CLIENT_DEPLOY_LABEL))


class _ManagerHost:
    """What the mig-manager pods reach, without widening the Twin's public surface."""

    def __init__(self, twin: Twin) -> None:
        self._twin = twin

    def node(self, name: str) -> TwinNode:
        removed = self._twin._removed_nodes.get(name)
        return removed if removed is not None else self._twin.node(name)

    def write_labels(self, node: str, patch: Mapping[str, str | None]) -> None:
        self._twin._write_labels(node, patch)

    def read_mig_config(self) -> str | None:
        return self._twin.mounted_mig_config()

    def is_stuck(self, node: str) -> bool:
        return node in self._twin.stuck_pending

    def record_run(self, run: MigRun) -> None:
        self._twin.mig_runs.append(run)

    def log(self, node: str, message: str) -> None:
        self._twin.log_lines.append(LogLine(time=self._twin.now(), node=node, message=message))


class Twin:
    """A digital twin of a MIG cluster; implements `optimizer.controller.port.ClusterPort`.

    Fault knobs: `stuck_pending` (node names whose operand pods do not terminate: a run waits in `pending` for
    them up to `timings.component_wait_s`, then, as `behaviour.version` does, gives up or carries on; spec §7.1)
    and `restart_mig_manager`. Records for assertions: `evictions`, `events`, `label_log`, `mig_runs`, `log_lines`.

    Besides mig-manager, a per-pod allocator may change layouts (`create_instance`, `destroy_instance`, then
    `start_pod`), with its own scheduler in place of the device plugin's (`use_scheduler`); and a node agent may
    restart the device plugin alone (`restart_device_plugin`). `instances_created` and `plugin_restarts` count
    those (mig-manager's runs count their own in `mig_runs`).
    """

    def __init__(
        self,
        nodes: Iterable[TwinNode],
        *,
        mig_config_text: str | None = None,
        timings: MigManagerTimings = DEFAULT_TIMINGS,
        seed: int = 0,
        grace_period_s: float = 30.0,
        registered: Mapping[str, Mapping[str, int]] | None = None,
        behaviour: MigManagerBehaviour = DEFAULT_BEHAVIOUR,
    ) -> None:
        self.clock = SimClock()
        self.timings = timings
        self.grace_period_s = grace_period_s
        self.stuck_pending: set[str] = set()
        self.evictions: list[EvictionRecord] = []
        self.events: list[RecordedEvent] = []
        self.label_log: list[LabelChange] = []
        self.mig_runs: list[MigRun] = []
        self.log_lines: list[LogLine] = []
        self._scheduler: PodScheduler = Scheduler(random.Random(seed))
        self._allocator_version = 0  # bumped when an allocator outside mig-manager changes instances or frees slots
        self.instances_created = 0  # by `create_instance` (mig-parted's are in `mig_runs`)
        self.plugin_restarts = 0  # by `restart_device_plugin`
        self._node_version = 0  # bumped by label, cordon and strategy changes
        self.node_revisions: dict[str, int] = {}  # per node: bumped by every metadata, cordon or taint change
        self._removed_nodes: dict[str, TwinNode] = {}  # gone from the cluster; their pending callbacks do nothing
        self._scheduled_at: tuple[int, ...] | None = None  # the state the last scheduling pass saw
        self._config_text = mig_config_text
        self.records: dict[str, str] = {}  # the controller's records of node changes (its own object's data)
        self._config_writes: list[tuple[float, str | None]] = [(-math.inf, mig_config_text)]
        self._snapshot_cache = SnapshotCache()
        self._plugins_version = 0  # bumped whenever any node's device plugin registers or stops
        self._nodes: dict[str, TwinNode] = {}
        for node in nodes:
            if node.name in self._nodes:
                raise ValueError(f"duplicate node {node.name!r}")
            node.register()
            self._nodes[node.name] = node
        self._pods = PodStore(self.clock, self._nodes, on_holdings=self._holdings_changed)
        self._pdbs: dict[str, PodDisruptionBudget] = {}
        host = _ManagerHost(self)
        self._managers = {name: MigManager(name, self.clock, host, timings, behaviour) for name in self._nodes}
        self._operands = {
            name: NodeOperands(node, self.clock, timings.restore_s, self._write_labels)
            for name, node in self._nodes.items()
        }
        for name, manager in self._managers.items():
            self._operands[name].plugin.on_change = partial(self._plugin_changed, name)
            self._operands[name].register_stale((registered or {}).get(name, {}))
            self._operands[name].boot()
            manager.adopt()
        self.clock.add_listener(self._schedule)

    @classmethod
    def from_snapshot(
        cls,
        snapshot: ClusterSnapshot,
        mig_config_text: str | None = None,
        timings: MigManagerTimings = DEFAULT_TIMINGS,
        seed: int = 0,
        grace_period_s: float = 30.0,
        behaviour: MigManagerBehaviour = DEFAULT_BEHAVIOUR,
    ) -> Twin:
        """A running cluster as the snapshot shows it; its mig-managers have already processed their labels.

        Pending pods that fit free advertised devices are bound at once, as the scheduler would.
        """
        twin = cls(
            [node_from_state(n) for n in snapshot.nodes], mig_config_text=mig_config_text, timings=timings,
            seed=seed, grace_period_s=grace_period_s,
            registered={n.name: registered_resources(n) for n in snapshot.nodes}, behaviour=behaviour,
        )  # fmt: skip
        load_pods(snapshot, twin._nodes, twin._pods)
        twin._schedule()
        return twin

    # ---- ClusterPort ------------------------------------------------------------------------------------

    def snapshot(self) -> ClusterSnapshot:
        return to_snapshot(
            self._nodes, {n: o.plugin for n, o in self._operands.items()}, self._pods, self._snapshot_cache
        )

    def patch_node(
        self, node: str, *, labels: Mapping[str, str | None] = _NO_CHANGES,
        annotations: Mapping[str, str | None] = _NO_CHANGES,
    ) -> None:  # fmt: skip
        target = self.node(node)
        for key, value in annotations.items():
            if value is None:
                target.annotations.pop(key, None)
            else:
                target.annotations[key] = value
        self._touch_node(node)
        self._write_labels(node, labels)
        self._schedule()

    def set_unschedulable(self, node: str, unschedulable: bool) -> None:
        self.node(node).unschedulable = unschedulable
        self._node_version += 1
        self._touch_node(node)
        self._schedule()

    def set_taints(self, node: str, taints: Iterable[Taint]) -> None:
        """Replace the node's taints (an API client's node update)."""
        self.node(node).taints = list(taints)
        self._node_version += 1
        self._touch_node(node)
        self.reschedule()

    def evict(self, pod: str, uid: str | None = None) -> EvictionOutcome:
        """The Eviction API. The twin never reuses a pod name, so a name is one incarnation and `uid` (a
        precondition for a real API server) has nothing to add here."""
        target = self._pods.active(pod)
        outcome = eviction_outcome(target, self._pods.running(), self._pdbs.values())
        if outcome is EvictionOutcome.EVICTED and target is not None and not target.terminating:
            if target.phase == PodPhase.RUNNING and target.spec.ignores_eviction:
                self._pods.terminate(target, self.grace_period_s)
            else:
                self._pods.delete(target)
            if target.spec.owned:
                self._pods.recreate(target)
        self.evictions.append(EvictionRecord(time=self.now(), pod=pod, outcome=outcome))
        self._schedule()
        return outcome

    def read_mig_config(self) -> str | None:
        return self._config_text

    def read_records(self) -> dict[str, str]:
        return dict(self.records)

    def write_record(self, node: str, text: str | None) -> None:
        if text is None:
            self.records.pop(node, None)
        else:
            self.records[node] = text

    def write_mig_config(self, text: str) -> None:
        self._set_config(text)

    def mounted_mig_config(self) -> str | None:
        """The ConfigMap as mig-manager's volume shows it now: the newest write at least `config_refresh_s` old."""
        visible_at = self.now() - self.timings.config_refresh_s
        seen = [text for written, text in self._config_writes if written <= visible_at]
        self._config_writes = self._config_writes[len(seen) - 1 :] if seen else self._config_writes
        return seen[-1] if seen else None

    def _set_config(self, text: str | None) -> None:
        self._config_text = text
        self._config_writes.append((self.now(), text))

    def delete_mig_config(self) -> None:
        """The ConfigMap is gone: mig-manager runs fail to read it until it is written again."""
        self._set_config(None)

    def record_event(self, kind: Literal["Pod", "Node"], name: str, reason: str, message: str) -> None:
        self.events.append(RecordedEvent(time=self.now(), kind=kind, name=name, reason=reason, message=message))

    def now(self) -> float:
        return self.clock.now

    # ---- time -------------------------------------------------------------------------------------------

    def run_until(self, until: float) -> int:
        """Fire everything due up to `until` and leave the clock there; returns the events fired."""
        return self.clock.run_until(until)

    def advance(self, seconds: float) -> int:
        return self.clock.run_until(self.now() + seconds)

    def run_until_idle(self, limit_s: float = 86_400.0) -> int:
        """Fire events until none is left or the next is more than `limit_s` away (pods that run forever and
        stuck runs schedule nothing, so this ends)."""
        return self.clock.run_until_idle(self.now() + limit_s)

    # ---- workload ---------------------------------------------------------------------------------------

    def add_pod(
        self,
        name: str,
        requests: Mapping[str, int],
        *,
        priority: int = 0,
        node_selector: Mapping[str, str] | None = None,
        node_affinity: list[NodeSelectorTerm] | None = None,
        tolerations: list[Toleration] | None = None,
        duration_s: float | None = None,
        evictable: bool = True,
        ignores_eviction: bool = False,
        owned: bool = True,
        at_least: tuple[SizedRequest, ...] = (),
    ) -> TwinPod:
        """Create a pending pod (the scheduler may bind it at once); raises `MigoptError` on a bad request.
        `at_least` is the same demand sized, for a scheduler that creates instances per pod."""
        spec = PodSpec(
            requests=dict(requests), at_least=at_least, priority=priority, node_selector=dict(node_selector or {}),
            node_affinity=list(node_affinity or []), tolerations=list(tolerations or []), duration_s=duration_s,
            evictable=evictable, ignores_eviction=ignores_eviction, owned=owned,
        )  # fmt: skip
        pod = self._pods.add(name, spec)
        self._schedule()
        return pod

    def add_pdb(self, name: str, pods: Iterable[str], min_available: int) -> PodDisruptionBudget:
        pdb = PodDisruptionBudget(name=name, pods=frozenset(pods), min_available=min_available)
        self._pdbs[name] = pdb
        return pdb

    def remove_pdb(self, name: str) -> None:
        self._pdbs.pop(name, None)

    def delete_pod(self, name: str) -> bool:
        """Delete an active pod now, freeing its devices (a controller-owned one comes back as a replacement);
        False when no active pod has that name."""
        target = self._pods.active(name)
        if target is None:
            return False
        self._pods.delete(target)
        if target.spec.owned:
            self._pods.recreate(target)
        self._schedule()
        return True

    def pod(self, name: str) -> TwinPod:
        """The pod of that name, including finished and deleted ones (KeyError if never created)."""
        return self._pods.pods[name]

    @property
    def pods(self) -> Mapping[str, TwinPod]:
        return MappingProxyType(self._pods.pods)

    # ---- nodes and operators ----------------------------------------------------------------------------

    def node(self, name: str) -> TwinNode:
        try:
            return self._nodes[name]
        except KeyError:
            raise KeyError(f"node {name!r} not found") from None

    @property
    def nodes(self) -> Mapping[str, TwinNode]:
        return MappingProxyType(self._nodes)

    def remove_node(self, name: str) -> None:
        """The node leaves the cluster: pods bound to it are deleted (owned ones re-created, pending elsewhere),
        its mig-manager and operands stop reacting."""
        target = self.node(name)
        for pod in list(self._pods.running()):
            if pod.node == name:
                self._pods.delete(pod)
                if pod.spec.owned:
                    self._pods.recreate(pod)
        self._removed_nodes[name] = target
        del self._nodes[name]
        self._managers.pop(name)
        self._operands.pop(name)
        self._node_version += 1
        self.reschedule()

    def node_version(self, name: str) -> tuple[object, ...]:
        """Changes whenever anything observable about the node may have: metadata, cordon, taints, advertised
        resources, which pods hold its devices, and (while its mig-manager runs) its layout. Lets an observer
        re-read only the nodes that changed."""
        node = self.node(name)
        layout: object = None
        if self._managers[name].busy:
            layout = tuple((g.mig_enabled, *((i.profile, i.start) for i in g.instances)) for g in node.gpus)
        plugin = self._operands[name].plugin
        return (self.node_revisions.get(name, 0), plugin.version, self._pods.holdings_version.get(name, 0), layout)

    def allocatable(self, node: str) -> dict[str, int]:
        """The device plugin's resources as kubelet reports them now."""
        self.node(node)
        return dict(self._operands[node].plugin.allocatable)

    def capacity(self, node: str) -> dict[str, int]:
        self.node(node)
        return dict(self._operands[node].plugin.capacity)

    def mig_manager(self, node: str) -> MigManager:
        self.node(node)
        return self._managers[node]

    def restart_mig_manager(self, node: str) -> None:
        """Kill and restart the node's mig-manager pod: a run in flight is abandoned, the label is re-applied."""
        self.mig_manager(node).start()

    def set_strategy(self, node: str, strategy: Strategy) -> None:
        """Change the device plugin's MIG strategy on a node (ClusterPolicy edit): both operands roll."""
        self.node(node).strategy = strategy
        self._node_version += 1
        self._touch_node(node)
        self._operands[node].restart()

    def use_scheduler(self, scheduler: PodScheduler) -> None:
        """Bind pending pods with `scheduler` from now on (a peer's, which creates an instance per pod)."""
        self._scheduler = scheduler
        self.reschedule()

    def create_instance(self, node: str, gpu: int, profile: str, start: int) -> None:
        """NVML's `CreateGpuInstanceWithPlacement` (and a full compute instance) on the node, without mig-manager:
        what the DRA driver does at prepare and HAMi's device plugin at Allocate. Raises `ValueError` where NVML
        would fail (overlap, no compute left, the profile's maximum, MIG disabled)."""
        create(self.node(node).gpu(gpu), profile, start)
        self.instances_created += 1
        self._layout_changed(node)

    def destroy_instance(self, node: str, gpu: int, start: int) -> None:
        """Destroy the free instance at `start`; raises `ValueError` when there is none or a pod holds it."""
        destroy(self.node(node).gpu(gpu), start)
        self._layout_changed(node)

    def assign_pod(self, name: str, node: str) -> None:
        """A scheduler's Bind of a pending pod to `node` before its devices exist (a per-pod allocator creates them,
        then `start_pod`). Made from inside a scheduling pass, so it starts no pass itself."""
        pod = self._pods.active(name)
        if pod is None:
            raise ValueError(f"pod {name!r} is not active")
        self._pods.assign(pod, node)

    def start_pod(self, name: str, node: str, devices: Iterable[DeviceRef]) -> None:
        """Start a pod, pending or assigned to `node`, on free instances of `node` (kubelet starting it once its
        allocator is done); raises `ValueError` when it is neither."""
        pod = self._pods.active(name)
        if pod is None or pod.phase != PodPhase.PENDING or pod.node not in (None, node):
            raise ValueError(f"pod {name!r} is not waiting to start on {node}")
        self._pods.bind(pod, node, list(devices))
        self._schedule()

    def restart_device_plugin(self, node: str, start_delay_s: float) -> None:
        """Delete the node's device-plugin pod alone: its devices go now and come back, enumerated afresh, after
        `start_delay_s` (nos's MIG agent does this after every change)."""
        self.node(node)
        self.plugin_restarts += 1
        self._operands[node].restart_plugin(start_delay_s)
        self._schedule()

    def allocator_freed(self) -> None:
        """A per-pod allocator freed slots in its own records (HAMi when a pod ends, DRA after unprepare): pods that
        found no room are worth another look. Made from a clock event; the pass after it sees the change."""
        self._allocator_version += 1

    def _layout_changed(self, node: str) -> None:
        """No scheduling pass here: an allocator or agent changes several instances in one step (then starts a pod
        or restarts the plugin), and the pass after that clock event sees the whole change."""
        self._allocator_version += 1
        self._scheduler.node_changed(node)

    def mig_manager_log(self, node: str) -> list[str]:
        return [line.message for line in self.log_lines if line.node == node]

    def state_history(self, node: str) -> list[str | None]:
        """Every value `nvidia.com/mig.config.state` took on the node, in order."""
        return [c.new for c in self.label_log if c.node == node and c.key == MIG_STATE_LABEL]

    # ---- internals --------------------------------------------------------------------------------------

    def _write_labels(self, node: str, patch: Mapping[str, str | None]) -> None:
        """The API server's label merge, then the watchers: mig-manager and operand DaemonSets."""
        if node in self._removed_nodes:
            return
        target = self.node(node)
        config_changed = operands_changed = False
        for key, value in patch.items():
            old = target.labels.get(key)
            if old == value:
                continue
            if value is None:
                del target.labels[key]
            else:
                target.labels[key] = value
            self.label_log.append(LabelChange(time=self.now(), node=node, key=key, old=old, new=value))
            self._node_version += 1
            self._touch_node(node)
            config_changed |= key == MIG_CONFIG_LABEL
            operands_changed |= key in _OPERAND_LABELS
        if operands_changed:
            self._operands[node].sync()
        if config_changed:
            self._managers[node].observe(target.labels.get(MIG_CONFIG_LABEL, ""))

    def _touch_node(self, node: str) -> None:
        self.node_revisions[node] = self.node_revisions.get(node, 0) + 1

    def _plugin_changed(self, node: str) -> None:
        self._plugins_version += 1
        self._scheduler.node_changed(node)

    def _holdings_changed(self, node: str) -> None:
        self._scheduler.node_changed(node)

    def _state_version(self) -> tuple[int, ...]:
        return (self._node_version, self._pods.version, self._plugins_version, self._allocator_version)

    def reschedule(self) -> None:
        """Run a scheduling pass even if the twin saw no change (after editing its state objects directly)."""
        self._scheduled_at = None
        self._scheduler.forget()
        self._schedule()

    def _schedule(self) -> None:
        """One pass, skipped when nothing that decides a binding changed since the last one."""
        if self._state_version() == self._scheduled_at:
            return
        if self._pods.queue:
            growth = (self._pods.released_version, self._node_version, self._plugins_version, self._allocator_version)
            self._scheduler.run(self._pods.queue, self._pods.demand, _SchedulingView(self), self._pods.bind, growth)
        self._scheduled_at = self._state_version()

    def pending_count(self) -> int:
        """How many pods wait for the scheduler now."""
        return len(self._pods.queue)

    def pending_pods(self) -> list[TwinPod]:
        """The pods waiting for the scheduler, in its queue order (priority descending, then arrival)."""
        return self._pods.pending()

    def demand(self, pod: TwinPod) -> Demand:
        """The pod's request as the planner and the scheduler's filters read it."""
        return self._pods.demand(pod)

    @property
    def releases(self) -> int:
        """Moves whenever a pod frees devices (ends, is deleted or evicted): the only way free capacity grows."""
        return self._pods.released_version


class _SchedulingView:
    """The twin as the scheduler reads it, node by node (`scheduler.SchedulingView`)."""

    def __init__(self, twin: Twin) -> None:
        self._twin = twin
        self.nodes: Mapping[str, TwinNode] = twin._nodes

    def advertised(self, node: str) -> frozenset[DeviceRef]:
        return self._twin._operands[node].plugin.devices

    def pool_key(self, node: str) -> tuple[int, ...]:
        return (self._twin._operands[node].plugin.version, self._twin._pods.holdings_version.get(node, 0))

    @property
    def revisions(self) -> Mapping[str, int]:
        return self._twin.node_revisions


def _conforms(twin: Twin) -> ClusterPort:
    """Static check (mypy) that the twin implements the controller's port."""
    return twin
