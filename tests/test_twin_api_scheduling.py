"""What the facade shows about time and scheduling: FailedScheduling Events, wall-clock stamps, printed columns,
and the field selectors kube-apiserver supports per resource."""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulations.twin.api import TwinApiServer
from simulations.twin.api.scheduling import SPAM_BURST, SPAM_REFILL_S, FailedSchedulingRecorder
from simulations.twin.api.wallclock import SimWallClock
from solver.snapshot import Taint
from tests.twin_api_fixtures import ONE_G, THREE_G, small_twin

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


@pytest.fixture
def server() -> Iterator[TwinApiServer]:
    with TwinApiServer(small_twin(), speed=0) as running:
        yield running


def call(server: TwinApiServer, path: str, body: Any = None, accept: str = "application/json") -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.url + path, data=data, method="POST" if data else "GET")
    request.add_header("Content-Type", "application/json")
    request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def create_pod(server: TwinApiServer, name: str, requests: dict[str, int], **spec: Any) -> dict[str, Any]:
    limits = {k: str(v) for k, v in requests.items()}
    body = {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "x",
                                                                 "resources": {"limits": limits}}]} | spec}  # fmt: skip
    code, pod = call(server, "/api/v1/namespaces/default/pods", body)
    assert code == 201, pod
    return dict(pod)


def failed_scheduling(server: TwinApiServer, pod: str) -> list[dict[str, Any]]:
    selector = urllib.parse.quote(f"reason=FailedScheduling,involvedObject.name={pod}")
    code, events = call(server, f"/api/v1/namespaces/default/events?fieldSelector={selector}")
    assert code == 200
    return list(events["items"])


def condition(server: TwinApiServer, pod: str) -> str:
    code, obj = call(server, f"/api/v1/namespaces/default/pods/{pod}")
    assert code == 200
    return str(next(c["message"] for c in obj["status"]["conditions"] if c["type"] == "PodScheduled"))


# ---- FailedScheduling -------------------------------------------------------------------------------------


def test_a_pending_pod_gets_failed_scheduling_events_as_the_scheduler_retries(server: TwinApiServer) -> None:
    created = create_pod(server, "wait", {THREE_G: 4})  # 3 + 2 free 3g slices, never 4 on one node
    insufficient = (
        "0/2 nodes are available: 2 Insufficient nvidia.com/mig-3g.20gb. preemption: 0/2 nodes are available: "
        "2 No preemption victims found for incoming pod."
    )
    [event] = failed_scheduling(server, "wait")
    assert (event["type"], event["message"], event["count"]) == ("Warning", insufficient, 1)
    assert event["source"] == {"component": "default-scheduler"} and event["reportingComponent"] == "default-scheduler"
    assert event["involvedObject"]["uid"] == created["metadata"]["uid"]
    assert condition(server, "wait") == insufficient
    server.advance(5)  # nothing changed, nothing due
    server.twin.set_unschedulable("node-b", True)
    server.sync()  # changed, but within the scheduler's backoff
    assert [e["count"] for e in failed_scheduling(server, "wait")] == [1]
    server.advance(10)  # the backoff is over: another attempt, which finds something else
    cordoned = (
        "0/2 nodes are available: 1 Insufficient nvidia.com/mig-3g.20gb, 1 node(s) were unschedulable. "
        "preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, "
        "1 Preemption is not helpful for scheduling."
    )
    events = failed_scheduling(server, "wait")
    assert [(e["message"], e["count"]) for e in events] == [(insufficient, 1), (cordoned, 1)]
    assert condition(server, "wait") == cordoned  # the scheduler updates the pod's condition too
    server.advance(300)  # unchanged for five minutes: tried again, the same message counts up
    again = failed_scheduling(server, "wait")[1]
    assert again["count"] == 2 and again["lastTimestamp"] >= again["firstTimestamp"]
    assert again["metadata"]["name"] == events[1]["metadata"]["name"]


def test_the_message_names_selectors_taints_and_cordons(server: TwinApiServer) -> None:
    server.twin.set_taints("node-a", [Taint(key="gpu", value="reserved", effect="NoSchedule")])
    server.twin.set_unschedulable("node-b", True)
    create_pod(server, "picky", {ONE_G: 1}, nodeSelector={"pool": "b"})
    [event] = failed_scheduling(server, "picky")
    assert event["message"].startswith(
        "0/2 nodes are available: 1 node(s) had untolerated taint {gpu: reserved}, 1 node(s) were unschedulable."
    )
    assert event["message"].endswith("preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.")


def test_a_pod_that_gets_scheduled_leaves_its_events_and_records_no_more(server: TwinApiServer) -> None:
    create_pod(server, "later", {THREE_G: 1}, nodeSelector={"pool": "b"})
    assert failed_scheduling(server, "later") == []  # bound at once: never failed
    server.twin.set_unschedulable("node-b", True)
    create_pod(server, "queued", {THREE_G: 1}, nodeSelector={"pool": "b"})
    assert len(failed_scheduling(server, "queued")) == 1
    server.twin.set_unschedulable("node-b", False)
    server.advance(600)
    assert server.twin.pod("default/queued").node == "node-b"
    [event] = failed_scheduling(server, "queued")
    assert event["count"] == 1


def test_the_spam_filter_lets_a_burst_through_then_one_per_refill() -> None:
    recorder = FailedSchedulingRecorder()
    writes = [recorder.attempt("ns/p", f"m{i % 2}", float(i), i) for i in range(SPAM_BURST + 5)]
    assert sum(w is not None for w in writes) == SPAM_BURST  # 25 s: not yet one refill
    assert all(w.first for w in writes if w is not None)  # the message alternates: a new Event each time
    assert recorder.attempt("ns/p", "m0", SPAM_BURST + 5 + SPAM_REFILL_S, 0) is not None
    assert recorder.due("ns/p", SPAM_BURST + 5 + SPAM_REFILL_S, 0) is False
    recorder.forget("ns/p")
    assert recorder.due("ns/p", 0.0, 0) is True


# ---- wall-clock stamps ------------------------------------------------------------------------------------


class FakeWall:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_stamps_follow_the_wall_clock_when_simulated_time_runs_ahead_or_stands_still() -> None:
    wall = FakeWall(1_700_000_000.0)
    clock = SimWallClock(0.0, wall)
    assert clock.wall_at(0.0, 0.0) == wall.now
    wall.now += 60  # a minute with the simulation stopped: "now" moves, the start stays
    assert clock.wall_at(0.0, 0.0) == wall.now
    wall.now += 1
    start = clock.wall_at(0.0, 3600.0)  # an hour simulated in one wall second
    assert start == 1_700_000_060.0 and clock.wall_at(3600.0, 3600.0) == wall.now
    assert clock.wall_at(1800.0, 3600.0) == pytest.approx(start + 0.5)
    assert clock.stamp(3600.0, 3600.0) == datetime.fromtimestamp(wall.now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.5, 7.0, 3600.0]), st.floats(0, 500)), min_size=1, max_size=30))
def test_stamps_are_never_in_the_future_never_go_back_and_never_change(steps: list[tuple[float, float]]) -> None:
    wall = FakeWall(1_000.0)
    clock = SimWallClock(0.0, wall)
    sim, given_out = 0.0, []
    for sim_step, wall_step in steps:
        sim += sim_step
        wall.now += wall_step
        given_out.append((sim, clock.wall_at(sim, sim)))
        assert given_out[-1][1] <= wall.now
    for (s0, w0), (s1, w1) in itertools.pairwise(given_out):
        assert w1 >= w0 or s1 == s0
    last_given = dict(given_out)  # while the clock stands still "now" follows the wall; then it stays put
    for moment, stamped in last_given.items():
        if moment < sim:
            assert clock.wall_at(moment, sim) == pytest.approx(stamped)


def test_objects_created_after_a_jump_are_not_in_the_future(server: TwinApiServer) -> None:
    server.advance(86_400)
    created = create_pod(server, "late", {THREE_G: 4})
    stamp = datetime.fromisoformat(created["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    assert stamp.timestamp() <= datetime.now(UTC).timestamp()
    [event] = failed_scheduling(server, "late")
    assert event["lastTimestamp"] <= datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- printed columns and field selectors -----------------------------------------------------------------


def columns(table: dict[str, Any], priority: int = 0) -> list[str]:
    return [c["name"] for c in table["columnDefinitions"] if c["priority"] <= priority]


def test_tables_have_the_api_servers_columns(server: TwinApiServer) -> None:
    create_pod(server, "wait", {THREE_G: 4})
    budget = {"metadata": {"name": "b"}, "spec": {"maxUnavailable": "50%", "selector": {}}}
    assert call(server, "/apis/policy/v1/namespaces/default/poddisruptionbudgets", budget)[0] == 201
    lease = {"metadata": {"name": "l"}, "spec": {"holderIdentity": "me"}}
    assert call(server, "/apis/coordination.k8s.io/v1/namespaces/default/leases", lease)[0] == 201
    note = {"metadata": {"name": "n"}, "regarding": {"kind": "Node", "name": "node-a"}, "reason": "Checked",
            "note": "fine", "type": "Normal", "reportingController": "migopt", "action": "Check",
            "eventTime": "2024-01-01T00:00:00.000000Z", "reportingInstance": "migopt-0"}  # fmt: skip
    assert call(server, "/apis/events.k8s.io/v1/namespaces/default/events", note)[0] == 201
    _, events = call(server, "/api/v1/namespaces/default/events", accept=TABLE)
    assert columns(events) == ["Last Seen", "Type", "Reason", "Object", "Message"]
    assert columns(events, 1)[-3:] == ["First Seen", "Count", "Name"]
    assert events["rows"][0]["cells"][1:4] == ["Warning", "FailedScheduling", "pod/wait"]
    _, new_events = call(server, "/apis/events.k8s.io/v1/namespaces/default/events", accept=TABLE)
    cells = new_events["rows"][0]["cells"]  # every column's cell, the wide ones too
    assert cells[1:4] == ["Normal", "Checked", "node/node-a"] and cells[5:7] == ["migopt", "fine"]
    _, budgets = call(server, "/apis/policy/v1/namespaces/default/poddisruptionbudgets", accept=TABLE)
    assert columns(budgets) == ["Name", "Min Available", "Max Unavailable", "Allowed Disruptions", "Age"]
    assert budgets["rows"][0]["cells"][:4] == ["b", "N/A", "50%", 0]
    _, leases = call(server, "/apis/coordination.k8s.io/v1/namespaces/default/leases", accept=TABLE)
    assert columns(leases) == ["Name", "Holder", "Age"] and leases["rows"][0]["cells"][:2] == ["l", "me"]
    _, namespaces = call(server, "/api/v1/namespaces", accept=TABLE)
    assert columns(namespaces) == ["Name", "Status", "Age"] and namespaces["rows"][0]["cells"][1] == "Active"


@pytest.mark.parametrize(
    ("path", "selector", "found"),
    [
        ("/api/v1/namespaces/default/events", "reason=FailedScheduling", 1),
        ("/api/v1/namespaces/default/events", "type=Normal", 0),
        ("/api/v1/namespaces/default/events", "involvedObject.kind=Pod,involvedObject.name=wait", 1),
        ("/api/v1/namespaces/default/events", "source=default-scheduler", 1),
        ("/api/v1/namespaces/default/events", "reportingComponent!=default-scheduler", 0),
        ("/apis/events.k8s.io/v1/namespaces/default/events", "regarding.name=wait", 0),
        ("/api/v1/pods", "spec.schedulerName=default-scheduler,status.phase=Pending", 1),
        ("/api/v1/nodes", "spec.unschedulable=false", 2),
        ("/api/v1/namespaces", "status.phase=Active,metadata.name=default", 1),
    ],
)
def test_field_selectors_by_resource(server: TwinApiServer, path: str, selector: str, found: int) -> None:
    create_pod(server, "wait", {THREE_G: 4})
    code, listed = call(server, f"{path}?fieldSelector={urllib.parse.quote(selector)}")
    assert code == 200 and len(listed["items"]) == found


@pytest.mark.parametrize(
    ("path", "selector"),
    [
        ("/api/v1/pods", "reason=x"),
        ("/api/v1/namespaces/default/events", "regarding.name=x"),
        ("/apis/events.k8s.io/v1/namespaces/default/events", "involvedObject.name=x"),
        ("/api/v1/namespaces/default/configmaps", "data.x=y"),
    ],
)
def test_field_labels_a_resource_does_not_support_are_refused(server: TwinApiServer, path: str, selector: str) -> None:
    code, status = call(server, f"{path}?fieldSelector={urllib.parse.quote(selector)}")
    label = selector.split("=")[0]
    assert code == 400 and status["message"] == f"field label not supported: {label}"
