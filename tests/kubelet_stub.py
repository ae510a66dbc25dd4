"""A kubelet pod-resources stand-in: a real gRPC server on a temporary unix socket answering `List` with `PODS`,
encoded by the client's own runtime-built messages (`optimizer/agent/pod_resources.py`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc

from optimizer.agent.pod_resources import SERVICE, messages

PODS = [
    {"name": "train-0", "namespace": "ml", "containers": [
        {"name": "main", "devices": [
            {"resource_name": "nvidia.com/mig-2g.10gb", "device_ids": ["MIG-a100-03"]},
            {"resource_name": "nvidia.com/gpu", "device_ids": ["GPU-whole"]},
        ]},
    ]},
    {"name": "notebook-b", "namespace": "lab", "containers": [
        {"name": "sidecar", "devices": []},
        {"name": "jupyter", "devices": [
            {"resource_name": "nvidia.com/mig-1g.5gb", "device_ids": ["MIG-a100-09::1"]},
        ]},
    ]},
    {"name": "notebook-a", "namespace": "lab", "containers": [
        {"name": "jupyter", "devices": [
            {"resource_name": "nvidia.com/mig-1g.5gb", "device_ids": ["MIG-a100-09::0"]},
        ]},
    ]},
    {"name": "cpu-only", "namespace": "default", "containers": [{"name": "c"}]},
]  # fmt: skip


@contextmanager
def serve_kubelet() -> Iterator[str]:
    """The socket's path while the stand-in serves."""
    folder = tempfile.mkdtemp(prefix="pr-", dir="/tmp")  # unix socket paths are limited to ~107 bytes
    path = os.path.join(folder, "kubelet.sock")
    classes = messages()

    def list_pods(request: Any, context: Any) -> Any:
        return classes["ListPodResourcesResponse"](pod_resources=PODS)

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "List": grpc.unary_unary_rpc_method_handler(
                list_pods,
                request_deserializer=classes["ListPodResourcesRequest"].FromString,
                response_serializer=classes["ListPodResourcesResponse"].SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix://{path}")
    server.start()
    try:
        yield path
    finally:
        server.stop(grace=None)
        shutil.rmtree(folder, ignore_errors=True)
