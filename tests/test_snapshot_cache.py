"""Facts the planner caches on a snapshot's frozen models follow their fields through `model_copy(update=...)`."""

from __future__ import annotations

from solver.snapshot import ClusterSnapshot, GpuState, InstanceState, RunningPod


def test_a_copied_gpu_with_other_instances_has_fresh_facts() -> None:
    gpu = GpuState(index=0, model="A100-40GB", instances=[InstanceState(profile="3g.20gb", start=0)])
    assert gpu.holders == frozenset() and gpu.free_instances == (("3g.20gb", 0),)  # computed, and cached
    held = [InstanceState(profile="3g.20gb", start=0, pod="a/b"), InstanceState(profile="3g.20gb", start=4)]
    copied = gpu.model_copy(update={"instances": held})
    assert copied.holders == {"a/b"} and copied.free_instances == (("3g.20gb", 4),)
    assert copied.mig_devices == {"3g.20gb": 2} and copied.layout_pairs == (("3g.20gb", 0), ("3g.20gb", 4))
    assert gpu.holders == frozenset() and gpu.mig_devices == {"3g.20gb": 1}  # the original keeps its own
    assert gpu.model_copy().holders == frozenset()  # a plain copy keeps what is still true


def test_a_copied_snapshot_with_other_running_pods_looks_them_up_afresh() -> None:
    snapshot = ClusterSnapshot(running=[RunningPod(name="a/b", priority=5)])
    assert snapshot.running_pod("a/b").priority == 5
    copied = snapshot.model_copy(update={"running": [RunningPod(name="a/b", priority=9)]})
    assert copied.running_pod("a/b").priority == 9
