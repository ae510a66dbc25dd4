"""The simulation's per-tick sample recounts only the nodes that may have changed; it must always equal a full
recount of the cluster, whatever happened in between (binds, completions, evictions, mig-manager runs, edits)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvidia_protocol.labels import MIG_CONFIG_LABEL
from simulations.engine import Sampler, initial_cluster, node_slices
from simulations.scenario import default_scenario
from simulations.twin import PodPhase, Twin
from simulations.twin.state import TwinInstance

_STEP = st.one_of(
    st.tuples(st.just("pod"), st.sampled_from(["1g.10gb", "3g.40gb", "7g.80gb"]), st.sampled_from([None, 40.0])),
    st.tuples(st.just("advance"), st.sampled_from([5.0, 30.0, 120.0])),
    st.tuples(st.just("evict"), st.integers(0, 30)),
    st.tuples(st.just("config"), st.integers(0, 1), st.sampled_from(["all-1g.10gb", "all-balanced", "all-7g.80gb"])),
    st.tuples(st.just("edit"), st.integers(0, 1)),
)


def recount(twin: Twin) -> tuple[int, int, int]:
    allocated = total = 0
    for node in twin.nodes.values():
        a, t = node_slices(node)
        allocated, total = allocated + a, total + t
    pending = sum(1 for p in twin.pods.values() if p.active and p.phase == PodPhase.PENDING)
    return allocated, total, pending


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_STEP, min_size=5, max_size=25))
def test_every_sample_equals_a_full_recount(steps: list[tuple[Any, ...]]) -> None:
    base = default_scenario()
    scenario = base.model_copy(update={"cluster": base.cluster.model_copy(update={"nodes": 2, "gpus_per_node": 2})})
    snapshot, config = initial_cluster(scenario, "all-balanced")
    twin = Twin.from_snapshot(snapshot, config)
    sampler = Sampler(twin)
    names = sorted(twin.nodes)
    for n, step in enumerate(steps):
        kind = step[0]
        if kind == "pod":
            twin.add_pod(f"ns/p{n}", {f"nvidia.com/mig-{step[1]}": 1}, duration_s=step[2])
        elif kind == "advance":
            twin.advance(step[1])
        elif kind == "evict":
            running = sorted(p.name for p in twin.pods.values() if p.active and p.phase == PodPhase.RUNNING)
            if running:
                twin.evict(running[step[1] % len(running)])
        elif kind == "config":
            twin.patch_node(names[step[1]], labels={MIG_CONFIG_LABEL: step[2]})
        else:  # out of band: a host process holds the first free device, or nothing is left of the layout
            gpu = twin.node(names[step[1]]).gpus[0]
            free = [i for i in gpu.instances if i.pod is None]
            if free:
                free[0].pod = "host/process"
            else:
                gpu.instances = [TwinInstance(profile="7g.80gb", start=0)]
            twin.reschedule()
        sample = sampler.sample()
        assert (sample.allocated_slices, sample.total_slices, sample.pending_pods) == recount(twin)
