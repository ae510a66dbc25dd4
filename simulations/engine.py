"""Run a scenario: the same workload on a fresh twin per policy, the real controller driving the twin.

`static:<config>` is an administrator's fixed geometry (no controller); `greedy` and `optimal` run migopt's
controller in `enforce` mode with that planner, starting from the scenario's initial config; `nos`, `hami` and
`dra` attach that peer's model to the twin (`simulations.peers`), from the same initial config (whose free
instances HAMi's and the DRA driver's plugins destroy as they start). Every policy gets
the same pods: each asks for its profile by name and, for the per-pod allocators, for at least that profile's
memory and compute (`workloads.sized_requests`). Time is simulated: the twin's clock jumps from event to event,
the controller ticks every `tick_s` of simulated time.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache, partial

from pydantic import BaseModel

from nvidia_protocol.labels import MIG_CONFIG_LABEL, MIG_STATE_LABEL
from nvidia_protocol.migparted import render_config
from nvidia_protocol.standard_configs import standard_config, standard_map
from optimizer.actuators.mig_manager import MigManagerActuator
from optimizer.controller.actuator import ActuationSettings
from optimizer.controller.observer import ControllerObserver
from optimizer.controller.reconcile import Controller, ControllerSettings
from simulations.peers.registry import PeerRun
from simulations.placement import apply_map
from simulations.policies import peer_policy, static_config
from simulations.report import PodTimes, PolicyResult, Sample, percentile, time_weighted_allocation, waits
from simulations.scenario import Scenario, SyntheticSource
from simulations.twin.cluster import Twin
from simulations.twin.mig_manager import MigManagerTimings
from simulations.twin.state import LayoutStamp, SizedRequest, TwinNode
from simulations.workloads import (
    WorkloadPod,
    default_replay,
    generate,
    inflate,
    load_trace,
    sized_requests,
    timed,
)
from solver.catalog import GpuModel, load_catalog
from solver.errors import MigoptError
from solver.plan import PlanPolicy
from solver.snapshot import STRATEGY_LABEL, ClusterSnapshot, GpuState, InstanceState, NodeState

Progress = Callable[[float], None]


def initial_cluster(scenario: Scenario, config: str) -> tuple[ClusterSnapshot, str]:
    """Nodes whose GPUs all hold the standard `config`, and the mig-parted file that names it."""
    shape = scenario.cluster
    catalog = load_catalog()
    models = [catalog.model(m) for m in shape.models]
    file = standard_config(models)
    if config not in file.mig_configs:
        raise MigoptError(f"{config} is not a standard MIG config of {', '.join(m.key for m in models)}")
    layouts = {}
    for model in models:
        layouts[model.key], _ = apply_map(model, standard_map(model, config) or {})
    nodes = []
    width = len(str(shape.nodes))
    for i in range(shape.nodes):
        model = models[i % len(models)]
        layout = layouts[model.key]
        if layout is None:
            raise MigoptError(f"{config} cannot be created on {model.key}")
        gpus = [
            GpuState(
                index=g, model=model.key, instances=[InstanceState(profile=x.profile, start=x.start) for x in layout]
            )
            for g in range(shape.gpus_per_node)
        ]
        labels = {MIG_CONFIG_LABEL: config, MIG_STATE_LABEL: "success", STRATEGY_LABEL: shape.strategy}
        nodes.append(NodeState(name=f"node-{i:0{width}d}", labels=labels, gpus=gpus))
    return ClusterSnapshot(nodes=nodes), render_config(file)


@cache
def _compute_slices(model: str, profile: str | None = None) -> int:
    """Compute slices of the GPU model, or of one of its profiles (looked up once: sampled every tick)."""
    gpu = load_catalog().model(model)
    return gpu.compute_slices if profile is None else gpu.profile(profile).compute_slices


def node_slices(node: TwinNode) -> tuple[int, int]:
    """(allocated, total) compute slices of the node's GPUs."""
    allocated = total = 0
    for gpu in node.gpus:
        total += _compute_slices(gpu.model)
        allocated += sum(_compute_slices(gpu.model, i.profile) for i in gpu.instances if i.pod)
    return allocated, total


class Sampler:
    """The figures sampled every tick; a node's slices are recounted only when its layout or holders may have
    changed (`TwinNode.layout_stamp`): at trace scale most nodes do not change between two ticks."""

    def __init__(self, twin: Twin) -> None:
        self._twin = twin
        self._slices: dict[str, tuple[LayoutStamp, tuple[int, int]]] = {}

    def sample(self) -> Sample:
        twin = self._twin
        allocated = total = 0
        for name, node in twin.nodes.items():
            cached = self._slices.get(name)
            if cached is None or not cached[0].stands(node):
                cached = self._slices[name] = (node.layout_stamp(), node_slices(node))
            allocated += cached[1][0]
            total += cached[1][1]
        pending = twin.pending_count()
        return Sample(time_s=twin.now(), allocated_slices=allocated, total_slices=total, pending_pods=pending)


def run_policy(
    scenario: Scenario,
    policy: str,
    pods: list[WorkloadPod],
    progress: Progress | None = None,
    observer: ControllerObserver | None = None,
) -> PolicyResult:
    """One policy on a fresh twin: the figures of `simulations.report`. `observer` (the metrics exporter) sees
    the controller's snapshots, plans and events."""
    with _fewer_collections():
        return _run_policy(scenario, policy, pods, progress, observer)


GC_THRESHOLDS = (50_000, 20, 100)
"""The cyclic garbage collector's thresholds while a policy runs (Python's defaults: 700, 10, 10)."""


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """A run allocates millions of short-lived objects beside a large heap of long-lived ones (the twin, the pods,
    every snapshot piece kept for reuse), and at the default thresholds the collector walks that heap over and over:
    a tenth of a 777-node run. Collect less often while a policy runs; nothing in a run depends on when garbage is
    collected (almost all of it goes by reference counting anyway), and the thresholds are restored after."""
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _run_policy(
    scenario: Scenario,
    policy: str,
    pods: list[WorkloadPod],
    progress: Progress | None,
    observer: ControllerObserver | None,
) -> PolicyResult:
    started = time.perf_counter()
    static = static_config(policy)
    peer = peer_policy(policy)
    snapshot, config_text = initial_cluster(scenario, static or scenario.cluster.initial_config)
    timings = MigManagerTimings(config_refresh_s=scenario.twin.config_refresh_s)
    twin = Twin.from_snapshot(snapshot, config_text, timings=timings, seed=scenario.seed)
    controller = None
    peer_run = None
    if peer is not None:
        peer_run = peer.attach(twin, scenario.peers, scenario.seed)
    elif static is None:
        knobs = scenario.controller
        settings = ControllerSettings(
            mode="enforce",
            planner=policy,
            batch_idle_s=knobs.batch_idle_s,
            batch_timeout_s=knobs.batch_timeout_s,
            policy=PlanPolicy(
                time_limit_s=knobs.time_limit_s,
                max_evictions=knobs.max_evictions,
                scope=knobs.scope,
                forecast_share=knobs.forecast_share,
            ),
            # waits for the twin's volume refresh as it waits for kubelet's on a cluster (README: Simulation)
            actuation=_actuation(knobs.config_propagation_s),
        )
        controller = Controller(twin, settings, actuator=MigManagerActuator(settings.actuation), observer=observer)
    sizer = Sizer(reference_models(scenario))
    for pod in pods:
        twin.clock.schedule(pod.arrival_s, _arrival(twin, pod, sizer(pod)))
    samples: list[Sample] = []
    sampler = Sampler(twin)
    tick = scenario.controller.tick_s
    now = 0.0
    while now <= scenario.horizon_s:
        twin.run_until(now)
        if controller is not None:
            controller.tick()
        samples.append(sampler.sample())
        if progress is not None:
            progress(now / scenario.horizon_s)
        now += tick
    planned = controller.plans_made if controller is not None else peer_run.plans if peer_run is not None else 0
    return _result(policy, twin, pods, samples, scenario.horizon_s, planned, peer_run, time.perf_counter() - started)


def reference_models(scenario: Scenario) -> list[GpuModel]:
    """Whose profile figures size the pods' requests (`workloads.sized_requests`): a replay's mapping model first
    (its pods' profiles are that model's), then the cluster's models in scenario order."""
    catalog = load_catalog()
    models = [catalog.model(m) for m in scenario.cluster.models]
    source = scenario.workload
    if isinstance(source, SyntheticSource):
        return models
    return [source.mapping.gpu, *(m for m in models if m.key != source.mapping.gpu.key)]


class Sizer:
    """Each pod's sized requests, worked out once per distinct request (a trace repeats a few hundred)."""

    def __init__(self, models: list[GpuModel]) -> None:
        self._models = models
        self._known: dict[tuple[tuple[str, int], ...], tuple[SizedRequest, ...]] = {}

    def __call__(self, pod: WorkloadPod) -> tuple[SizedRequest, ...]:
        key = tuple(sorted(pod.requests.items()))
        found = self._known.get(key)
        if found is None:
            found = self._known[key] = sized_requests(pod.requests, self._models)
        return found


def _actuation(config_propagation_s: float | None) -> ActuationSettings:
    """The controller's actuation settings in a simulation: its defaults unless the scenario sets the wait."""
    if config_propagation_s is None:
        return ActuationSettings()
    return ActuationSettings(config_propagation_s=config_propagation_s)


def _arrival(twin: Twin, pod: WorkloadPod, at_least: tuple[SizedRequest, ...]) -> Callable[[], None]:
    def arrive() -> None:
        twin.add_pod(
            pod.name, pod.requests, priority=pod.priority, node_selector=pod.node_selector, duration_s=pod.duration_s,
            at_least=at_least,
        )  # fmt: skip

    return arrive


def _result(
    policy: str,
    twin: Twin,
    pods: list[WorkloadPod],
    samples: list[Sample],
    horizon_s: float,
    plans: int,
    peer: PeerRun | None,
    wall_s: float,
) -> PolicyResult:
    first_start: dict[str, float] = {}
    for pod in twin.pods.values():
        if pod.started_at is not None:
            first_start[pod.origin] = min(first_start.get(pod.origin, pod.started_at), pod.started_at)
    arrived = [p for p in pods if p.arrival_s <= horizon_s]
    times = [PodTimes(name=p.name, arrival_s=p.arrival_s, started_s=first_start.get(p.name)) for p in arrived]
    waited = waits(times, horizon_s)
    rebuilt = sum(1 for run in twin.mig_runs if run.outcome == "success" and run.went_pending)
    rebuilt += peer.reconfigurations if peer is not None else 0
    restarts = sum(1 for run in twin.mig_runs if run.went_pending) + twin.plugin_restarts
    created = sum(run.instances_created for run in twin.mig_runs) + twin.instances_created
    return PolicyResult(
        policy=policy,
        served_pods=sum(1 for t in times if t.started_s is not None),
        arrived_pods=len(arrived),
        pending_seconds_p50=round(percentile(waited, 0.5), 1),
        pending_seconds_p95=round(percentile(waited, 0.95), 1),
        slice_allocation=round(time_weighted_allocation(samples, horizon_s), 4),
        final_allocation=round(samples[-1].allocated_slices / max(samples[-1].total_slices, 1), 4) if samples else 0.0,
        reconfigurations=rebuilt,
        evictions=sum(1 for e in twin.evictions if e.outcome == "evicted"),
        instance_creations=created,
        operand_restarts=restarts,
        plans=plans,
        wall_seconds=round(wall_s, 2),
        samples=samples,
    )


class SimulationReport(BaseModel):
    scenario: str
    horizon_s: float
    pods: int
    policies: dict[str, PolicyResult]


def workload_pods(scenario: Scenario) -> list[WorkloadPod]:
    """The scenario's pods: generated, or replayed from a trace (inflate fills the cluster's compute slices)."""
    source = scenario.workload
    if isinstance(source, SyntheticSource):
        return generate(source.spec)
    rows = load_trace(source.path)
    replay = source.replay or default_replay(rows)
    if replay == "timed":
        return timed(rows, source.mapping, time_scale=source.time_scale, window_s=source.window_s)
    shape = scenario.cluster
    capacity = shape.nodes * shape.gpus_per_node * load_catalog().model(shape.models[0]).compute_slices
    return inflate(rows, source.mapping, capacity, target_share=source.target_share, seed=source.seed)


def run_scenario(
    scenario: Scenario,
    progress: Callable[[str, float], None] | None = None,
    observer: ControllerObserver | None = None,
) -> SimulationReport:
    """Every policy of the scenario on the same pods; `observer` watches each controller-driven policy in turn."""
    pods = workload_pods(scenario)
    results = {}
    for policy in scenario.policies:
        results[policy] = run_policy(scenario, policy, pods, partial(progress, policy) if progress else None, observer)
    return SimulationReport(scenario=scenario.name, horizon_s=scenario.horizon_s, pods=len(pods), policies=results)
