"""The twin's per-pod instance operations (what HAMi's plugin and the DRA driver do through NVML), the node lock
around them, a device-plugin restart on its own, and the instance counts every policy reports."""

from __future__ import annotations

from typing import Any

import pytest

from nvidia_protocol.labels import MIG_CONFIG_LABEL
from simulations.twin import Twin
from simulations.twin.clock import SimClock
from simulations.twin.node_lock import NodeLock
from simulations.twin.state import DeviceRef
from solver.snapshot import parse_snapshot
from tests.twin_fixtures import CONFIG, T


def make(*layouts: list[dict[str, Any]]) -> Twin:
    gpus = [{"index": i, "model": "A100-40GB", "instances": layout} for i, layout in enumerate(layouts)]
    return Twin.from_snapshot(parse_snapshot({"nodes": [{"name": "n", "gpus": gpus}]}), CONFIG, timings=T)


def test_an_instance_is_created_only_where_nvml_would_create_it() -> None:
    twin = make([{"profile": "3g.20gb", "start": 4}])
    twin.create_instance("n", 0, "2g.10gb", 0)
    assert twin.instances_created == 1
    for profile, start, problem in (
        ("1g.5gb", 1, "Insufficient Resources"),  # overlaps the 2g at [0, 2)
        ("2g.10gb", 1, "cannot start at 1"),
        ("4g.20gb", 0, "Insufficient Resources"),
        ("9g.1gb", 0, "has no profile"),
    ):
        with pytest.raises(ValueError, match=problem):
            twin.create_instance("n", 0, profile, start)
    twin.create_instance("n", 0, "1g.5gb", 2)
    twin.create_instance("n", 0, "1g.5gb", 3)  # 2 + 3 + 1 + 1 = 7 compute slices: the GPU is full
    with pytest.raises(ValueError, match="Insufficient Resources"):
        twin.create_instance("n", 0, "1g.5gb", 3)
    assert twin.instances_created == 3


def test_a_held_instance_cannot_be_destroyed_and_a_pod_starts_only_once() -> None:
    twin = make([])
    twin.add_pod("p", {"nvidia.com/mig-3g.20gb": 1})
    assert twin.pod("p").node is None  # nothing advertised: it waits
    twin.create_instance("n", 0, "3g.20gb", 4)
    twin.start_pod("p", "n", [DeviceRef(gpu=0, start=4, profile="3g.20gb")])
    assert twin.pod("p").devices[0].start == 4 and twin.pod("p").started_at == 0
    with pytest.raises(ValueError, match="In use by another client"):
        twin.destroy_instance("n", 0, 4)
    with pytest.raises(ValueError, match="not waiting to start"):
        twin.start_pod("p", "n", [])
    with pytest.raises(ValueError, match="no instance at 0"):
        twin.destroy_instance("n", 0, 0)
    twin.delete_pod("p")
    twin.destroy_instance("n", 0, 4)
    assert twin.node("n").gpu(0).instances == []


def test_an_assigned_pod_leaves_the_queue_until_it_starts() -> None:
    twin = make([])
    twin.add_pod("p", {"nvidia.com/mig-1g.5gb": 1})
    assert twin.pending_count() == 1
    twin.assign_pod("p", "n")
    assert twin.pending_count() == 0 and twin.pod("p").node == "n" and twin.pod("p").started_at is None
    twin.create_instance("n", 0, "1g.5gb", 0)
    with pytest.raises(ValueError, match="not waiting to start on other"):
        twin.start_pod("p", "other", [])
    twin.start_pod("p", "n", [DeviceRef(gpu=0, start=0, profile="1g.5gb")])
    assert twin.pod("p").phase == "Running"


def test_a_device_plugin_restart_hides_the_devices_until_it_registers_again() -> None:
    twin = make([{"profile": "1g.5gb", "start": 0}])
    assert twin.allocatable("n")["nvidia.com/mig-1g.5gb"] == 1
    twin.create_instance("n", 0, "1g.5gb", 1)
    assert twin.allocatable("n")["nvidia.com/mig-1g.5gb"] == 1  # the running plugin enumerated before it
    twin.restart_device_plugin("n", start_delay_s=15)
    assert twin.allocatable("n")["nvidia.com/mig-1g.5gb"] == 0 and twin.plugin_restarts == 1
    twin.advance(15)
    assert twin.allocatable("n")["nvidia.com/mig-1g.5gb"] == 2


def test_the_node_lock_runs_operations_one_at_a_time_in_order() -> None:
    clock = SimClock()
    lock = NodeLock(clock)
    done: list[tuple[str, float]] = []
    lock.submit(2, lambda: done.append(("a", clock.now)))
    lock.submit(1, lambda: done.append(("b", clock.now)))
    assert lock.busy and len(lock) == 2
    clock.run_until(10)
    lock.submit(0.5, lambda: done.append(("c", clock.now)))
    clock.run_until(20)
    assert done == [("a", 2), ("b", 3), ("c", 10.5)] and not lock.busy
    with pytest.raises(ValueError):
        lock.submit(-1, lambda: None)


def test_a_mig_manager_run_records_the_instances_it_created() -> None:
    twin = make([], [{"profile": "3g.20gb", "start": 0}, {"profile": "3g.20gb", "start": 4}])
    twin.patch_node("n", labels={MIG_CONFIG_LABEL: "all-3g"})
    twin.run_until_idle()
    run = twin.mig_runs[-1]
    assert run.outcome == "success" and run.instances_created == 2  # GPU 1 already held the map: left alone
