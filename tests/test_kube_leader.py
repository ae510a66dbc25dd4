"""Leader election on a Lease (against the twin's API facade, on a fake clock), and the lease lost mid-change:
actuation stops at the next step boundary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from optimizer.actuators.node_record import PHASE
from optimizer.kube.api import ApiCaller
from optimizer.kube.leader import LeaderElector, LeaderSettings
from simulations.twin.api import FaultRule, TwinApiServer
from tests.controller_fixtures import mig_controller
from tests.kube_fixtures import ENFORCE, adapter, api_client, cluster, create_pod, settle

SETTINGS = LeaderSettings(lease_duration_s=15, renew_deadline_s=10, retry_period_s=2)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[TwinApiServer]:
    with TwinApiServer(cluster(1), speed=0) as running:
        yield running


def elector(server: TwinApiServer, identity: str, clock: FakeClock) -> LeaderElector:
    return LeaderElector(api_client(server), SETTINGS, identity, ApiCaller(attempts=1), clock=clock)


def test_one_leader_at_a_time_and_takeover_only_after_the_lease_expires(server: TwinApiServer) -> None:
    clock = FakeClock()
    a, b = elector(server, "a", clock), elector(server, "b", clock)
    assert a.step() is True
    assert b.step() is False
    clock.now = 10.0
    assert a.step() is True  # renewed
    assert b.step() is False
    clock.now = 24.0  # a stopped renewing at 10: b has seen the same record for 14 s < 15 s
    assert b.step() is False
    assert a.is_leader() is False  # past its renew deadline: a stops acting before b may start
    clock.now = 26.0
    assert b.step() is True
    lease = server.store.get("leases.coordination.k8s.io", "migopt-system", "migopt-controller")
    assert lease is not None and lease.obj["spec"]["holderIdentity"] == "b"
    assert lease.obj["spec"]["leaseTransitions"] == 1


def test_release_hands_over_at_once(server: TwinApiServer) -> None:
    clock = FakeClock()
    a, b = elector(server, "a", clock), elector(server, "b", clock)
    assert a.step()
    b.step()
    a.release()
    clock.now = 1.0  # the released record is new to b; its one-second duration passes
    b.step()
    clock.now = 2.5
    assert b.step() is True


def test_settings_must_order_retry_deadline_and_duration() -> None:
    with pytest.raises(ValueError, match="retry_period_s < renew_deadline_s < lease_duration_s"):
        LeaderSettings(lease_duration_s=5, renew_deadline_s=10, retry_period_s=2)


def test_a_lease_lost_mid_change_stops_actuation_at_the_next_step(server: TwinApiServer) -> None:
    clock = FakeClock()
    leader = elector(server, "a", clock)
    assert leader.step()
    port = adapter(server)
    try:
        for n in range(7):
            create_pod(api_client(server), f"infer-{n}", "nvidia.com/mig-1g.5gb")
        settle(port, server)
        controller = mig_controller(port, ENFORCE, may_act=leader.is_leader)
        controller.tick()  # plans and starts the change: the node is being cordoned
        settle(port, server)
        started = {n: node.annotations.get(PHASE) for n, node in server.twin.nodes.items()}
        assert any(started.values())
        server.faults.add(FaultRule(verb="*", resource="leases", code=500, count=100))
        clock.now = 11.0
        assert leader.step() is False  # renewals fail past the deadline: no longer leader
        before = len(server.twin.label_log), len(server.twin.evictions)
        controller.tick()
        settle(port, server)
        assert (len(server.twin.label_log), len(server.twin.evictions)) == before
        assert {n: node.annotations.get(PHASE) for n, node in server.twin.nodes.items()} == started
    finally:
        port.stop()


def test_with_election_off_the_only_replica_reports_itself_leader(server: TwinApiServer) -> None:
    """`migopt_leader` (and so the leader-scoped alerts and panels) must not read 0 when nobody elects."""
    told: list[bool] = []
    off = SETTINGS.model_copy(update={"enabled": False})
    single = LeaderElector(api_client(server), off, "only", ApiCaller(attempts=1), on_change=told.append)
    single.start()
    assert told == [True] and single.is_leader()
    single.stop()
