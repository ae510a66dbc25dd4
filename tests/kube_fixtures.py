"""The Kubernetes adapter pointed at the twin's API facade (manual clock), and helpers to drive the controller.

The adapter's caches follow the facade through watches, so a test waits until they have caught up (every
object's resourceVersion equal to the facade's) before each reconcile pass instead of sleeping.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from optimizer.controller.actuator import ActuationSettings
from optimizer.controller.reconcile import Controller, ControllerSettings
from optimizer.kube.adapter import KubeClusterPort, KubeSettings
from optimizer.kube.api import ApiCaller
from optimizer.kube.informer import Informer
from simulations.twin import Twin
from simulations.twin.api import TwinApiServer
from solver.errors import MigoptError
from solver.snapshot import parse_snapshot
from tests.twin_fixtures import CONFIG, T

LABELS = {"nvidia.com/mig.config": "all-3g", "nvidia.com/mig.config.state": "success"}
# the facade's mig-manager reads the ConfigMap as written: no kubelet volume refresh to wait for
ENFORCE = ControllerSettings(
    mode="enforce", batch_idle_s=0, batch_timeout_s=0, actuation=ActuationSettings(config_propagation_s=0)
)


def gpu(index: int, pods: dict[int, str] | None = None) -> dict[str, Any]:
    held = pods or {}
    return {
        "index": index,
        "model": "A100-40GB",
        "instances": [{"profile": "3g.20gb", "start": s, "pod": held.get(s)} for s in (0, 4)],
    }


def cluster(nodes: int = 2, held: dict[str, dict[int, dict[int, str]]] | None = None) -> Twin:
    """`nodes` A100-40GB nodes (`node-0`…) of two GPUs split 2 x 3g.20gb; `held[node][gpu][start]` = pod."""
    held = held or {}
    spec = [
        {
            "name": f"node-{n}",
            "labels": dict(LABELS),
            "gpus": [gpu(g, held.get(f"node-{n}", {}).get(g)) for g in (0, 1)],
        }
        for n in range(nodes)
    ]
    return Twin.from_snapshot(parse_snapshot({"nodes": spec}), CONFIG, timings=T)


def api_client(server: TwinApiServer) -> client.ApiClient:
    return client.ApiClient(client.Configuration(host=server.url))


def adapter(server: TwinApiServer, **settings: Any) -> KubeClusterPort:
    port = KubeClusterPort(
        api_client(server),
        KubeSettings(watch_timeout_s=30, sync_timeout_s=10, event_qps=0, **settings),
        caller=ApiCaller(backoff_s=0.01, max_backoff_s=0.05),
    )
    port.start()
    return port


def _versions(informer: Informer) -> dict[str, str]:
    return {
        (f"{o['metadata'].get('namespace')}/" if o["metadata"].get("namespace") else "") + o["metadata"]["name"]: str(
            o["metadata"]["resourceVersion"]
        )
        for o in informer.items()
    }


def _facade_versions(server: TwinApiServer, resource: str, keep: Callable[[dict[str, Any]], bool]) -> dict[str, str]:
    with server.lock:
        stored = [s.obj for s in server.store.items(resource)]
    return {
        (f"{o['metadata'].get('namespace')}/" if o["metadata"].get("namespace") else "") + o["metadata"]["name"]: str(
            o["metadata"]["resourceVersion"]
        )
        for o in stored
        if keep(o)
    }


def caught_up(port: KubeClusterPort, server: TwinApiServer) -> bool:
    from optimizer.kube.objects import pod_requests

    return _versions(port.nodes) == _facade_versions(server, "nodes", lambda _: True) and _versions(
        port.pods
    ) == _facade_versions(server, "pods", lambda p: bool(pod_requests(p)))


def settle(port: KubeClusterPort, server: TwinApiServer, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not caught_up(port, server):
        if time.monotonic() > deadline:
            raise AssertionError("the adapter's caches did not catch up with the facade")
        time.sleep(0.01)


def drive(
    controller: Controller,
    port: KubeClusterPort,
    server: TwinApiServer,
    *,
    until: Callable[[], bool],
    step_s: float = 5.0,
    max_steps: int = 200,
    on_step: Callable[[int], None] | None = None,
) -> int:
    """Tick, advance the twin's clock, repeat until `until()`; returns the steps taken."""
    for step in range(max_steps):
        settle(port, server)
        if until():
            return step
        if on_step:
            on_step(step)
        with contextlib.suppress(MigoptError):  # as `migopt run` does: logged, counted, the next pass starts afresh
            controller.tick()
        settle(port, server)
        server.advance(step_s)
    raise AssertionError(f"not converged after {max_steps} steps")


def create_pod(
    api: client.ApiClient, name: str, resource: str, *, namespace: str = "team-b", priority: int = 0, **meta: Any
) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": {
            "priority": priority,
            "containers": [{"name": "main", "image": "x", "resources": {"limits": {resource: "1"}}}],
        },
    }
    core = client.CoreV1Api(api)
    if namespace not in {n.metadata.name for n in core.list_namespace().items}:
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    core.create_namespaced_pod(namespace, body)


def served(server: TwinApiServer, names: list[str]) -> bool:
    with server.lock:
        pods = server.twin.pods
        return all(n in pods and pods[n].phase == "Running" for n in names)
