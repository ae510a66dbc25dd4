"""Typed Kubernetes API errors: each failure the client layer sees becomes its class (unit, and through the real
`kubernetes` client against the twin's API facade with injected faults), and the failure policy and the adapter's
handling work on those classes."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from optimizer.controller.port import EvictionOutcome
from optimizer.kube.adapter import KubeClusterPort, KubeSettings
from optimizer.kube.api import ApiCaller, KubeApi, kube_error, watch_error
from optimizer.kube.errors import (
    Conflict,
    Forbidden,
    Gone,
    KubeApiError,
    NotFound,
    ServerError,
    TooManyRequests,
    Unreachable,
    api_error,
    parse_retry_after,
)
from optimizer.kube.leader import LeaderElector, LeaderSettings
from simulations.twin.api import FaultRule, TwinApiServer
from solver.errors import MigoptError
from tests.kube_fixtures import adapter, api_client, cluster

STATUSES = [
    (403, Forbidden),
    (404, NotFound),
    (409, Conflict),
    (410, Gone),
    (429, TooManyRequests),
    (500, ServerError),
    (503, ServerError),
]


def api_exception(status: int | None, reason: str = "", message: str = "", headers: Any = None) -> ApiException:
    """What the generated client raises for an HTTP error: a `Status` body, the response's headers."""
    err = ApiException(status=status, reason="HTTP reason")
    err.body = json.dumps({"kind": "Status", "code": status, "reason": reason, "message": message})
    err.headers = headers
    return err


# ---- the mapping -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "cls"), STATUSES)
def test_each_status_maps_to_its_class(status: int, cls: type[KubeApiError]) -> None:
    err = kube_error(api_exception(status, "Why", "what happened"), "patch", "nodes")
    assert type(err) is cls
    assert isinstance(err, MigoptError)  # a failed pass is logged and counted like any other migopt error
    fields = (err.status, err.verb, err.resource, err.reason, err.detail)
    assert fields == (status, "patch", "nodes", "Why", "what happened")
    expected = (
        "RBAC denies patch nodes: what happened" if status == 403 else f"patch nodes: {status} Why: what happened"
    )
    assert str(err) == expected


@pytest.mark.parametrize("status", [400, 401, 405, 422])
def test_statuses_nobody_branches_on_get_the_base_class(status: int) -> None:
    err = kube_error(api_exception(status, "Invalid", "bad"), "create", "configmaps")
    assert type(err) is KubeApiError and err.status == status


def test_retry_after_is_carried_from_the_header() -> None:
    headers = urllib3.HTTPHeaderDict({"retry-after": "3"})  # header names are case-insensitive
    err = kube_error(api_exception(429, "TooManyRequests", "slow down", headers), "create", "pods/eviction")
    assert isinstance(err, TooManyRequests) and err.retry_after == 3.0
    assert kube_error(api_exception(429, headers={}), "get", "leases").retry_after is None
    assert kube_error(api_exception(503, headers={"Retry-After": "2"}), "get", "leases").retry_after == 2.0


RETRY_AFTER = [("5", 5.0), ("0.5", 0.5), ("-1", 0.0), (None, None), ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("", None)]


@pytest.mark.parametrize(("value", "seconds"), RETRY_AFTER)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_a_body_that_is_not_a_status_falls_back_to_the_http_reason() -> None:
    raw = ApiException(status=502, reason="Bad Gateway")
    raw.body = "<html>proxy error</html>"
    err = kube_error(raw, "list", "nodes")
    assert isinstance(err, ServerError) and (err.reason, err.detail) == ("Bad Gateway", "Bad Gateway")


def test_no_answer_is_unreachable_and_a_client_side_error_is_not() -> None:
    refused = kube_error(urllib3.exceptions.MaxRetryError(None, "/api", "Connection refused"), "get", "nodes")
    assert isinstance(refused, Unreachable) and refused.status == 0 and "Max retries" in refused.detail
    timeout = kube_error(TimeoutError("timed out\nmore"), "watch", "pods")
    assert isinstance(timeout, Unreachable) and str(timeout) == "watch pods: timed out"
    local = kube_error(ApiException(reason="Missing the required parameter"), "get", "nodes")
    assert type(local) is KubeApiError and local.status == 0


def test_a_typed_error_passes_through_unchanged() -> None:
    err = NotFound("x", status=404)
    assert kube_error(err, "get", "nodes") is err


def test_with_message_keeps_class_and_fields() -> None:
    err = api_error(429, verb="create", resource="pods/eviction", reason="TooManyRequests", retry_after=4.0)
    again = err.with_message("gave up")
    assert type(again) is TooManyRequests and str(again) == "gave up"
    assert (again.status, again.verb, again.resource, again.retry_after) == (429, "create", "pods/eviction", 4.0)


def test_watch_error_events_map_like_responses() -> None:
    expired = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}}
    err = watch_error("nodes", expired)
    assert isinstance(err, Gone) and str(err) == "watch nodes: 410 Expired: too old"
    assert isinstance(watch_error("pods", {"type": "ERROR", "object": {}}), ServerError)  # no code: a server error


# ---- the failure policy on typed errors ------------------------------------------------------------------


class Script:
    """A call that fails with each of `failures` in turn, then returns "ok"."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def policy(attempts: int = 3) -> tuple[ApiCaller, list[float]]:
    slept: list[float] = []
    return ApiCaller(attempts=attempts, backoff_s=0.5, max_backoff_s=10.0, sleep=slept.append), slept


def test_429_waits_as_long_as_retry_after_says_then_retries() -> None:
    caller, slept = policy()
    call = Script(api_exception(429, headers={"Retry-After": "3"}), api_exception(429))
    assert caller("create", "events", call) == "ok"
    assert slept == [3.0, 1.0]  # the server's Retry-After, then the doubled backoff when it says nothing
    assert caller.retries[429] == 2 and caller.requests["create", "events"] == 3


def test_retry_after_is_capped_by_the_maximum_backoff() -> None:
    caller, slept = policy()
    assert caller("get", "leases", Script(TooManyRequests("x", status=429, retry_after=60.0))) == "ok"
    assert slept == [10.0]


@pytest.mark.parametrize(
    ("failure", "cls", "status"),
    [
        (api_exception(500, "InternalError", "boom"), ServerError, 500),
        (ConnectionRefusedError("refused"), Unreachable, 0),
    ],
)
def test_server_errors_and_no_answer_retry_then_give_up_typed(
    failure: BaseException, cls: type[KubeApiError], status: int
) -> None:
    caller, slept = policy(attempts=3)
    call = Script(failure, failure, failure)
    with pytest.raises(cls, match="patch nodes: gave up after 3 attempts") as err:
        caller("patch", "nodes", call, idempotent=True)
    assert err.value.status == status and call.calls == 3 and len(slept) == 2


def test_409_is_retried_only_on_an_idempotent_write() -> None:
    caller, _ = policy()
    assert caller("patch", "nodes", Script(api_exception(409, "Conflict")), idempotent=True) == "ok"
    versioned = Script(api_exception(409, "Conflict", "the object has been modified"))
    with pytest.raises(Conflict, match="update leases: 409 Conflict: the object has been modified"):
        caller("update", "leases", versioned)
    assert versioned.calls == 1


def test_allowed_statuses_are_raised_at_once_typed() -> None:
    caller, slept = policy()
    call = Script(api_exception(429, "TooManyRequests", headers={"Retry-After": "1"}))
    with pytest.raises(TooManyRequests) as err:
        caller("create", "pods/eviction", call, allow=(404, 429), idempotent=True)
    assert err.value.retry_after == 1.0 and call.calls == 1 and slept == [] and not caller.retries


def test_other_client_errors_are_not_retried() -> None:
    caller, _ = policy()
    invalid = Script(api_exception(422, "Invalid", "spec.x: Required value"))
    with pytest.raises(KubeApiError, match="create configmaps: 422 Invalid") as err:
        caller("create", "configmaps", invalid)
    assert type(err.value) is KubeApiError and invalid.calls == 1


def test_a_403_is_forbidden_and_reported_once_per_verb_and_resource(caplog: pytest.LogCaptureFixture) -> None:
    caller, slept = policy()
    caplog.set_level(logging.ERROR, logger="optimizer.kube.api")
    for _ in range(3):
        with pytest.raises(Forbidden, match="RBAC denies patch nodes: nodes is forbidden"):
            caller("patch", "nodes", Script(api_exception(403, "Forbidden", "nodes is forbidden")))
    with pytest.raises(Forbidden):
        caller("get", "leases", Script(api_exception(403, "Forbidden", "leases is forbidden")))
    denials = [r.getMessage() for r in caplog.records if "RBAC denies" in r.getMessage()]
    assert len(denials) == 2 and "verb=patch resource=nodes" in denials[0] and "resource=leases" in denials[1]
    assert slept == []


def test_read_or_none_is_none_only_for_404() -> None:
    caller, _ = policy()
    assert caller.read_or_none("leases", Script(api_exception(404, "NotFound"))) is None  # type: ignore[arg-type]
    with pytest.raises(Forbidden):
        caller.read_or_none("leases", Script(api_exception(403, "Forbidden")))  # type: ignore[arg-type]


# ---- through the real client, against the facade ---------------------------------------------------------


@pytest.fixture
def server() -> Iterator[TwinApiServer]:
    with TwinApiServer(cluster(1, held={"node-0": {0: {0: "team-a/train-0"}}}), speed=0) as running:
        yield running


@pytest.mark.parametrize(("code", "cls"), [(code, cls) for code, cls in STATUSES if code not in (404, 410)])
def test_injected_faults_arrive_typed(server: TwinApiServer, code: int, cls: type[KubeApiError]) -> None:
    api = KubeApi(api_client(server))
    server.faults.add(FaultRule(verb="patch", resource="nodes", code=code, retry_after_s=7))
    with pytest.raises(cls) as err:
        api.patch_node("node-0", {"metadata": {"labels": {"x": "1"}}})
    assert (err.value.status, err.value.verb, err.value.resource) == (code, "patch", "nodes")
    assert err.value.retry_after == (7.0 if code == 429 else None)
    assert api.patch_node("node-0", {"metadata": {"labels": {"x": "1"}}})["metadata"]["labels"]["x"] == "1"


def test_a_missing_object_is_not_found(server: TwinApiServer) -> None:
    api = KubeApi(api_client(server))
    with pytest.raises(NotFound, match="get configmaps: 404 NotFound"):
        api.read_config_map("nope", "gpu-operator")
    with pytest.raises(NotFound):
        api.evict("nope", "team-a")


def test_an_expired_watch_is_gone(server: TwinApiServer) -> None:
    nodes = KubeApi(api_client(server)).nodes()
    version = nodes.list()["metadata"]["resourceVersion"]
    with server.lock:
        server.store.expire_history()
    with nodes.watch(version, timeout_s=5) as stream:
        events = list(stream)
    assert [e["type"] for e in events] == ["ERROR"]
    assert isinstance(watch_error("nodes", events[0]), Gone)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_server_that_is_not_there_is_unreachable() -> None:
    configuration = client.Configuration(host=f"http://127.0.0.1:{closed_port()}")
    configuration.retries = False
    api = KubeApi(client.ApiClient(configuration))
    with pytest.raises(Unreachable) as err:
        api.nodes().list()
    assert err.value.status == 0 and err.value.verb == "list" and "\n" not in str(err.value)


# ---- the adapter and the leader on typed errors ----------------------------------------------------------


@pytest.fixture
def port(server: TwinApiServer) -> Iterator[KubeClusterPort]:
    started = adapter(server)
    yield started
    started.stop()


def test_eviction_outcomes(server: TwinApiServer, port: KubeClusterPort) -> None:
    assert port.evict("team-a/nope") is EvictionOutcome.GONE  # 404
    server.faults.add(FaultRule(verb="create", resource="pods/eviction", code=429, retry_after_s=0))
    assert port.evict("team-a/train-0") is EvictionOutcome.BLOCKED  # 429: a budget's answer, not retried
    assert port.caller.requests["create", "pods/eviction"] == 2 and not port.caller.retries
    assert server.twin.evictions == []
    server.faults.add(FaultRule(verb="create", resource="pods/eviction", code=500, count=1))
    assert port.evict("team-a/train-0") is EvictionOutcome.EVICTED  # a 500 is retried
    assert port.caller.retries[500] == 1


def test_an_eviction_denied_by_rbac_raises_forbidden_reported_once(
    server: TwinApiServer, port: KubeClusterPort, caplog: pytest.LogCaptureFixture
) -> None:
    server.faults.add(FaultRule(verb="create", resource="pods/eviction", code=403, count=10))
    caplog.set_level(logging.ERROR, logger="optimizer.kube.api")
    for _ in range(2):
        with pytest.raises(Forbidden, match="RBAC denies create pods/eviction"):
            port.evict("team-a/train-0")
    assert sum("RBAC denies verb=create resource=pods/eviction" in r.getMessage() for r in caplog.records) == 1


def test_config_map_conflicts_are_reread_and_retried_then_given_up(
    server: TwinApiServer, port: KubeClusterPort
) -> None:
    text = port.read_mig_config()
    assert text is not None
    server.faults.add(FaultRule(verb="update", resource="configmaps", code=409, count=2))
    port.write_mig_config(text + "\n")
    assert port.caller.requests["update", "configmaps"] == 3
    server.faults.add(FaultRule(verb="update", resource="configmaps", code=409, count=5))
    with pytest.raises(Conflict, match="conflicts kept winning"):
        port.write_mig_config(text)


def test_a_failed_one_shot_list_raises_typed(server: TwinApiServer) -> None:
    port = KubeClusterPort(api_client(server), KubeSettings(), caller=ApiCaller(attempts=1))
    server.faults.add(FaultRule(verb="list", resource="nodes", code=503))
    with pytest.raises(ServerError, match="list nodes: 503"):
        port.sync_once()
    port.sync_once()
    assert port.nodes.synced


def test_the_leader_treats_api_failures_as_not_leading(server: TwinApiServer, caplog: pytest.LogCaptureFixture) -> None:
    settings = LeaderSettings(lease_duration_s=15, renew_deadline_s=10, retry_period_s=2)
    elector = LeaderElector(KubeApi(api_client(server)), settings, "a", ApiCaller(attempts=1))
    server.faults.add(FaultRule(verb="get", resource="leases", code=500, count=2))
    caplog.set_level(logging.WARNING, logger="optimizer.kube.leader")
    assert elector.step() is False and elector.step() is False
    assert sum("renew failed" in r.getMessage() for r in caplog.records) == 1  # once per distinct failure
    assert elector.step() is True
    server.faults.add(FaultRule(verb="update", resource="leases", code=409))
    assert elector.step() is True  # a lost race (409) is not an error: still within its renew deadline
