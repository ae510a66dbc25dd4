"""The node agent's `migopt.io/gpu-report` annotation, written for a twin node as the real agent would write it.

Per GPU: its instances with profile, NVML profile id (catalog), GPU-instance id (`start + 1`: deterministic
and stable while the instance exists), placement start and size, `busy` when a pod holds it and `pod` the
holder as `namespace/name`. UUIDs are derived from the node name and positions, so they are stable too.
`observed_at` is the wall-clock time the bridge renders the report at (see `TwinBridge`), not simulated time.
"""

from __future__ import annotations

import uuid

from nvidia_protocol.agent_report import NodeGpuReport, ReportedGpu, ReportedInstance, observed_time
from simulations.twin.state import TwinNode

DRIVER = "550.54.15"
_UUIDS = uuid.UUID("0b7e9f3e-1f7c-4c55-8d0e-6d69676f7074")


def qualified_pod(name: str) -> str:
    """A twin pod name as `namespace/name` (the twin's bare names live in `default`)."""
    return name if "/" in name else f"default/{name}"


def node_report(node: TwinNode, observed_at: float | None = None) -> NodeGpuReport:
    """The report; `observed_at` (wall-clock Unix seconds) stamps it, as the agent stamps its NVML read."""
    gpus = []
    for gpu in node.gpus:
        model = gpu.gpu_model
        instances = []
        if gpu.mig_enabled:
            for inst in sorted(gpu.instances, key=lambda i: i.start):
                profile = model.profile(inst.profile)
                instances.append(
                    ReportedInstance(
                        profile=profile.name, profile_id=profile.id, gi=inst.start + 1, start=inst.start,
                        size=profile.memory_slices, busy=inst.pod is not None,
                        pod=qualified_pod(inst.pod) if inst.pod else None,
                        uuid=f"MIG-{uuid.uuid5(_UUIDS, f'{node.name}/{gpu.index}/{inst.start}/{profile.name}')}",
                    )
                )  # fmt: skip
        gpus.append(
            ReportedGpu(
                index=gpu.index, uuid=f"GPU-{uuid.uuid5(_UUIDS, f'{node.name}/{gpu.index}')}",
                name=model.nvml_names[0], pci_device_id=model.pci_device_ids[0], mig_current=gpu.mig_enabled,
                mig_pending=gpu.mig_enabled, instances=instances,
            )
        )  # fmt: skip
    stamp = observed_time(observed_at) if observed_at is not None else None
    return NodeGpuReport(driver=DRIVER, pod_resources=True, observed_at=stamp, gpus=gpus)
