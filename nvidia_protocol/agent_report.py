"""The node agent's per-node report: the one annotation the agent writes and the Kubernetes adapter reads.

It is the most precise source of a node's MIG truth (exact placements, which device runs processes, which pod
holds which device), so the adapter prefers it over every other source. The JSON is compact (short, stable
field names, no nulls) because it lives in a node annotation, which every node watcher receives.

`observed_at` is when the agent read NVML, in RFC 3339 UTC (whole seconds; a Unix number is read too). The
agent re-publishes at least every half of the controller's maximum age even when nothing changed, so a report
whose time is too old tells the reader its agent stopped; the reader compares it with its own wall clock.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from solver.errors import MigoptError, first_problem

GPU_REPORT_ANNOTATION = "migopt.io/gpu-report"
REPORT_VERSION = 1


class _Report(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ReportedInstance(_Report):
    """One MIG GPU instance and what runs on it."""

    profile: str = Field(description="profile name as mig-parted spells it, e.g. 1g.10gb")
    profile_id: int = Field(ge=0, description="NVML GPU-instance profile id")
    gi: int = Field(ge=0, description="GPU instance id (dcgm-exporter's GPU_I_ID)")
    start: int = Field(ge=0)
    size: int = Field(ge=1)
    compute_instances: int = Field(default=1, ge=0)
    uuid: str | None = Field(default=None, description="MIG-… device UUID")
    busy: bool = Field(default=False, description="a process runs on it")
    pod: str | None = Field(default=None, description="namespace/name, from the kubelet pod-resources API")


class ReportedGpu(_Report):
    index: int = Field(ge=0)
    uuid: str
    name: str = Field(description="NVML device name")
    pci_device_id: str = Field(description="e.g. 0x233010DE")
    mig_current: bool
    mig_pending: bool
    instances: list[ReportedInstance] = []


class NodeGpuReport(_Report):
    """What the agent saw on its node. `error` is set (and `gpus` may be empty) when NVML could not be read."""

    version: int = REPORT_VERSION
    driver: str | None = None
    error: str | None = None
    pod_resources: bool = Field(default=False, description="whether pods were mapped to devices")
    observed_at: AwareDatetime | None = Field(
        default=None, description="when NVML was read (absent in reports of agents before it existed)"
    )
    gpus: list[ReportedGpu] = []

    def to_annotation(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), separators=(",", ":"), sort_keys=True)


def observed_time(unix_s: float) -> datetime:
    """A wall-clock time as a report's `observed_at`: UTC, whole seconds (so the annotation stays short)."""
    return datetime.fromtimestamp(int(unix_s), UTC)


def parse_report(text: str, node: str) -> NodeGpuReport:
    """Parse the annotation; a malformed one is a one-line error naming the node."""
    try:
        return NodeGpuReport.model_validate_json(text)
    except ValidationError as err:
        where, message = first_problem(err, "report")
        raise MigoptError(f"node {node}: annotation {GPU_REPORT_ANNOTATION}: {where}: {message}") from None
