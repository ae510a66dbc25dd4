"""The kubelet pod-resources client against a real gRPC server on a temporary unix socket."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from optimizer.agent.node_agent import NodeAgent, socket_owners
from optimizer.agent.pod_resources import list_mig_owners, mig_uuid
from solver.errors import MigoptError
from tests.fake_nvml import FakeGpu, FakeInstance, FakeNvml


def test_mig_devices_map_to_pods(kubelet: str) -> None:
    assert list_mig_owners(kubelet) == {"MIG-a100-03": "ml/train-0", "MIG-a100-09": "lab/notebook-a"}


def test_the_agent_reports_the_pods(kubelet: str) -> None:
    gpu = FakeGpu("A100-40GB", "GPU-a100", instances=[FakeInstance("2g.10gb", 0, 3), FakeInstance("1g.5gb", 2, 9)])
    written: list[str] = []
    result = NodeAgent(FakeNvml([gpu]), written.append, socket_owners(kubelet)).step()
    assert result.report.pod_resources
    assert [i.pod for i in result.report.gpus[0].instances] == ["ml/train-0", "lab/notebook-a"]


def test_a_dead_socket_is_one_line() -> None:
    folder = tempfile.mkdtemp(prefix="pr-", dir="/tmp")
    try:
        path = os.path.join(folder, "kubelet.sock")
        with pytest.raises(MigoptError) as err:
            list_mig_owners(path, timeout_s=1.0)
        assert str(err.value).startswith(f"pod-resources List on {path} failed") and "\n" not in str(err.value)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(
    ("device_id", "uuid"),
    [
        ("MIG-4a2e1b3c-9f0d-5e6a-8b7c-1d2e3f4a5b6c", "MIG-4a2e1b3c-9f0d-5e6a-8b7c-1d2e3f4a5b6c"),
        ("MIG-4a2e1b3c-9f0d-5e6a-8b7c-1d2e3f4a5b6c::7", "MIG-4a2e1b3c-9f0d-5e6a-8b7c-1d2e3f4a5b6c"),
        ("GPU-4a2e1b3c-9f0d-5e6a-8b7c-1d2e3f4a5b6c", None),
        ("nvidia0/gi3", None),
    ],
)
def test_device_ids(device_id: str, uuid: str | None) -> None:
    assert mig_uuid(device_id) == uuid
