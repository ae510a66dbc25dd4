"""Which pod holds which MIG device, from the kubelet pod-resources API (v1 `List`) over its unix socket.

The kubelet ships no Python client, and generated stubs would pin a protoc version, so the few messages
needed are described at runtime with protobuf's descriptor API, using the field numbers of the published
`k8s.io/kubelet/pkg/apis/podresources/v1/api.proto`. Fields this module does not declare (CPU ids, memory,
topology, dynamic resources) are skipped by the parser, so newer kubelets answer fine.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.protobuf import (  # type: ignore[import-untyped]
    descriptor_pb2,
    descriptor_pool,
    message_factory,
)

from solver.errors import MigoptError

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
LIST_METHOD = "/v1.PodResourcesLister/List"
SERVICE = "v1.PodResourcesLister"

_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_ONE = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_MANY = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED

# message → (field name, number, type, label, message type); numbers from the upstream v1 api.proto.
_SCHEMA: dict[str, list[tuple[str, int, int, int, str]]] = {
    "ListPodResourcesRequest": [],
    "ListPodResourcesResponse": [("pod_resources", 1, _MESSAGE, _MANY, ".v1.PodResources")],
    "PodResources": [
        ("name", 1, _STRING, _ONE, ""),
        ("namespace", 2, _STRING, _ONE, ""),
        ("containers", 3, _MESSAGE, _MANY, ".v1.ContainerResources"),
    ],
    "ContainerResources": [
        ("name", 1, _STRING, _ONE, ""),
        ("devices", 2, _MESSAGE, _MANY, ".v1.ContainerDevices"),
    ],
    "ContainerDevices": [
        ("resource_name", 1, _STRING, _ONE, ""),
        ("device_ids", 2, _STRING, _MANY, ""),
    ],
}

# A MIG device UUID as the device plugin hands it out, optionally with a time-slicing replica suffix `::N`.
_MIG_DEVICE = re.compile(r"^(MIG-[^:]+)(?:::\d+)?$")


@cache
def messages() -> dict[str, Any]:
    """The message classes, built once in a private descriptor pool (no clash with other protobuf users)."""
    file = descriptor_pb2.FileDescriptorProto(name="migopt/podresources_v1.proto", package="v1", syntax="proto3")
    for name, fields in _SCHEMA.items():
        message = file.message_type.add(name=name)
        for field, number, kind, label, type_name in fields:
            message.field.add(name=field, number=number, type=kind, label=label, type_name=type_name or None)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"v1.{name}")) for name in _SCHEMA}


def mig_uuid(device_id: str) -> str | None:
    """The MIG UUID a device id names (`MIG-…` or `MIG-…::3`), None for whole GPUs and other devices."""
    found = _MIG_DEVICE.match(device_id.strip())
    return found.group(1) if found else None


def device_owners(response: Any) -> dict[str, str]:
    """MIG UUID → `namespace/name` of the pod holding it; with time-slicing, the first pod by name wins."""
    owners: dict[str, str] = {}
    for pod in response.pod_resources:
        for container in pod.containers:
            for device in container.devices:
                for device_id in device.device_ids:
                    uuid = mig_uuid(device_id)
                    if uuid is not None:
                        owner = f"{pod.namespace}/{pod.name}"
                        owners[uuid] = min(owners.get(uuid, owner), owner)
    return owners


def list_mig_owners(socket_path: str = DEFAULT_SOCKET, timeout_s: float = 5.0) -> dict[str, str]:
    """Call the kubelet's `List` once; any gRPC failure is one `MigoptError` line."""
    classes = messages()
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        call = channel.unary_unary(
            LIST_METHOD,
            request_serializer=classes["ListPodResourcesRequest"].SerializeToString,
            response_deserializer=classes["ListPodResourcesResponse"].FromString,
        )
        try:
            response = call(classes["ListPodResourcesRequest"](), timeout=timeout_s)
        except grpc.RpcError as err:
            detail = err.details() if hasattr(err, "details") else str(err)
            raise MigoptError(f"pod-resources List on {socket_path} failed: {detail}") from None
    return device_owners(response)
