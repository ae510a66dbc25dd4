"""The node agent against a fake NVML node: the exact report, publish-on-change, errors, and read-only use."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pynvml
import pytest

from nvidia_protocol.agent_report import GPU_REPORT_ANNOTATION, parse_report
from optimizer.agent.node_agent import NodeAgent, kubernetes_writer, read_report, run_loop, socket_owners
from optimizer.agent.nvml_layout import catalog_profile_name
from solver.catalog import load_catalog
from solver.errors import MigoptError
from tests.cli_runner import run_cli
from tests.fake_nvml import FakeGpu, FakeInstance, FakeNvml


def mixed_a100() -> FakeGpu:
    """2g.10gb busy at 0, 1g.5gb at 2, 1g.5gb+me with no compute instance at 3, 3g.20gb with two CIs at 4."""
    return FakeGpu(
        "A100-40GB",
        "GPU-a100",
        instances=[
            FakeInstance("3g.20gb", start=4, gi=2, cis=2),
            FakeInstance("2g.10gb", start=0, gi=3, processes=2),
            FakeInstance("1g.5gb", start=2, gi=9),
            FakeInstance("1g.5gb+me", start=3, gi=10, cis=0),
        ],
        renamed={"2g.10gb": "2g.9gb"},  # a driver's drifted name maps back by profile id
    )


def node() -> FakeNvml:
    return FakeNvml(
        [
            mixed_a100(),
            FakeGpu("H100-80GB", "GPU-h100-off", mig=(0, 0)),
            FakeGpu("H100-80GB", "GPU-h100-pending", mig=(0, 1)),
        ]
    )


EXPECTED = {
    "driver": "550.54.15",
    "pod_resources": True,
    "version": 1,
    "gpus": [
        {
            "index": 0,
            "uuid": "GPU-a100",
            "name": "NVIDIA A100-SXM4-40GB",
            "pci_device_id": "0x20B010DE",
            "mig_current": True,
            "mig_pending": True,
            "instances": [
                {"profile": "2g.10gb", "profile_id": 14, "gi": 3, "start": 0, "size": 2, "compute_instances": 1,
                 "uuid": "MIG-a100-03", "busy": True, "pod": "ml/train-0"},
                {"profile": "1g.5gb", "profile_id": 19, "gi": 9, "start": 2, "size": 1, "compute_instances": 1,
                 "uuid": "MIG-a100-09", "busy": False},
                {"profile": "1g.5gb+me", "profile_id": 20, "gi": 10, "start": 3, "size": 1, "compute_instances": 0,
                 "busy": False},
                {"profile": "3g.20gb", "profile_id": 9, "gi": 2, "start": 4, "size": 4, "compute_instances": 2,
                 "uuid": "MIG-a100-02", "busy": False, "pod": "ml/notebook"},
            ],
        },
        {"index": 1, "uuid": "GPU-h100-off", "name": "NVIDIA H100 80GB HBM3", "pci_device_id": "0x233010DE",
         "mig_current": False, "mig_pending": False, "instances": []},
        {"index": 2, "uuid": "GPU-h100-pending", "name": "NVIDIA H100 80GB HBM3", "pci_device_id": "0x233010DE",
         "mig_current": False, "mig_pending": True, "instances": []},
    ],
}  # fmt: skip

OWNERS = {"MIG-a100-03": "ml/train-0", "MIG-a100-02": "ml/notebook", "MIG-elsewhere": "ml/other"}


class Annotations:
    """A writer that records what would be patched, and can be told to fail like an API server would."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self.down = False

    def __call__(self, value: str) -> None:
        if self.down:
            raise MigoptError("patch node n1: HTTP 503 Service Unavailable")
        self.values.append(value)


def test_the_report_is_exact() -> None:
    nvml = node()
    report, warnings = read_report(nvml, lambda: OWNERS)
    assert json.loads(report.to_annotation()) == EXPECTED
    assert parse_report(report.to_annotation(), "n1") == report
    assert warnings == []
    assert nvml.forbidden == []
    assert nvml.calls[0] == "nvmlInit" and nvml.calls[-1] == "nvmlShutdown"


def test_gpus_with_mig_off_are_not_asked_for_instances() -> None:
    nvml = FakeNvml([FakeGpu("H100-80GB", "GPU-h100-off", mig=(0, 0))])
    report, _ = read_report(nvml, None)
    assert not report.pod_resources and report.gpus[0].instances == []
    assert not any("Instance" in c or ("Mig" in c and c != "nvmlDeviceGetMigMode") for c in nvml.calls)


def test_a_gpu_without_mig_support_is_reported_plainly() -> None:
    report, _ = read_report(FakeNvml([FakeGpu("A100-40GB", "GPU-old", mig=None)]), None)
    assert report.error is None
    assert (report.gpus[0].mig_current, report.gpus[0].mig_pending) == (False, False)


def test_mig_being_disabled_still_reports_the_live_instances() -> None:
    gpu = FakeGpu("A100-40GB", "GPU-a", mig=(1, 0), instances=[FakeInstance("7g.40gb", start=0, gi=0)])
    report, _ = read_report(FakeNvml([gpu]), None)
    assert report.gpus[0].mig_current and not report.gpus[0].mig_pending
    assert [(i.profile, i.size) for i in report.gpus[0].instances] == [("7g.40gb", 8)]


def test_the_annotation_is_patched_only_when_it_changes() -> None:
    nvml, written = node(), Annotations()
    agent = NodeAgent(nvml, written, lambda: OWNERS)
    assert [agent.step().written for _ in range(3)] == [True, False, False]
    nvml.gpus[0].instances[2].processes = 1  # a process starts on the 1g.5gb
    assert agent.step().written
    assert len(written.values) == 2
    assert json.loads(written.values[1])["gpus"][0]["instances"][1]["busy"] is True
    assert nvml.forbidden == []


def test_a_failed_patch_is_retried_next_interval(caplog: pytest.LogCaptureFixture) -> None:
    written = Annotations()
    agent = NodeAgent(node(), written)
    written.down = True
    with caplog.at_level(logging.WARNING, logger="optimizer.agent.node_agent"):
        first, second = agent.step(), agent.step()
    assert first.failed and second.failed and not written.values
    assert sum("HTTP 503" in r.getMessage() for r in caplog.records) == 1  # logged once, not every interval
    written.down = False
    assert agent.step().written and len(written.values) == 1


def test_a_missing_driver_is_an_error_report_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    nvml, written = node(), Annotations()
    nvml.fail["nvmlInit"] = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    agent = NodeAgent(nvml, written)
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        if len(waits) == 3:
            del nvml.fail["nvmlInit"]  # the driver container finished loading the module
        return len(waits) == 4

    with caplog.at_level(logging.WARNING, logger="optimizer.agent.node_agent"):
        last = run_loop(agent, 30.0, once=False, wait=wait)
    assert waits == [30.0] * 4
    assert [json.loads(v).get("error") for v in written.values] == [
        "NVML unavailable: Driver Not Loaded (no NVIDIA driver on this node?)",
        None,
    ]
    assert json.loads(written.values[0])["gpus"] == []
    assert not last.failed and len(last.report.gpus) == 3
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Driver Not Loaded" in m for m in messages) == 1
    assert any("agent-recovered" in m for m in messages)
    assert "nvmlShutdown" not in nvml.calls[: nvml.calls.index("nvmlSystemGetDriverVersion")]


def test_an_error_mid_read_is_one_line_and_nvml_is_shut_down() -> None:
    nvml = node()
    nvml.fail["nvmlGpuInstanceGetInfo"] = pynvml.NVML_ERROR_GPU_IS_LOST
    report, _ = read_report(nvml, None)
    assert report.error == "NVML error while reading GPUs: GPU is lost"
    assert report.gpus == [] and "\n" not in report.to_annotation()
    assert nvml.calls[-1] == "nvmlShutdown"


def test_unreadable_processes_are_not_busy_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    nvml = node()
    nvml.fail["nvmlDeviceGetComputeRunningProcesses"] = pynvml.NVML_ERROR_NOT_SUPPORTED  # e.g. no monitor capability
    agent = NodeAgent(nvml, Annotations())
    with caplog.at_level(logging.WARNING, logger="optimizer.agent.node_agent"):
        result = agent.step()
        agent.step()
    assert result.report.error is None and not result.failed
    assert not any(i.busy for i in result.report.gpus[0].instances)
    assert sum("processes of MIG devices unreadable" in r.getMessage() for r in caplog.records) == 1


def test_profiles_the_catalog_lacks_keep_the_driver_name() -> None:
    a100 = load_catalog().model("A100-40GB")
    assert catalog_profile_name(None, 19, "1g.5gb") == "1g.5gb"
    assert catalog_profile_name(a100, 99, "5g.30gb") == "5g.30gb"
    assert catalog_profile_name(a100, 9, "3g.19gb") == "3g.20gb"


def test_the_fake_refuses_every_mutating_call() -> None:
    nvml = node()
    for name in ("nvmlDeviceSetMigMode", "nvmlDeviceCreateGpuInstance", "nvmlGpuInstanceDestroy",
                 "nvmlDeviceResetGpuLockedClocks", "nvmlGpuInstanceCreateComputeInstance"):  # fmt: skip
        with pytest.raises(AssertionError):
            getattr(nvml, name)(("gpu", 0), 1)
    assert len(nvml.forbidden) == 5


def test_pod_resources_trouble_is_a_warning_not_an_error() -> None:
    def broken() -> dict[str, str] | None:
        raise MigoptError("pod-resources List on /x.sock failed: unavailable")

    report, warnings = read_report(node(), broken)
    assert report.error is None and not report.pod_resources
    assert warnings == ["pod-resources List on /x.sock failed: unavailable"]
    assert socket_owners("/nonexistent/kubelet.sock")() is None  # the socket is optional


def test_the_kubernetes_write_patches_one_annotation_of_its_node(tmp_path: Path) -> None:
    """Against the twin's API facade with the real client: the annotation lands, nothing else changes."""
    from simulations.twin.api import TwinApiServer, write_kubeconfig
    from tests.kube_fixtures import cluster

    with TwinApiServer(cluster(1), speed=0, agent_annotations=False) as server:
        labels_before = dict(server.twin.node("node-0").labels)
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
        kubernetes_writer("node-0", kubeconfig)('{"version":1}')
        node = server.twin.node("node-0")
        assert node.annotations == {GPU_REPORT_ANNOTATION: '{"version":1}'}
        assert node.labels == labels_before
        assert server.core.requests[("patch", "nodes")] == 1
        with pytest.raises(MigoptError, match="node-9"):
            kubernetes_writer("node-9", kubeconfig)('{"version":1}')  # a node that does not exist: one line


def test_cli_dry_run_prints_the_annotation(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = node()
    monkeypatch.setattr("optimizer.agent.node_agent.load_nvml", lambda: nvml)
    result = run_cli(capsys, "agent", "--once", "--dry-run", "--pod-resources-socket", "/nonexistent.sock")
    assert result.code == 0
    printed = json.loads(result.out)
    assert printed["gpus"][0]["instances"][0]["busy"] is True and printed["pod_resources"] is False
    nvml.fail["nvmlInit"] = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    assert run_cli(capsys, "agent", "--once", "--dry-run").code == 1


def test_cli_needs_a_node_name_to_patch(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    result = run_cli(capsys, "agent", "--once")
    assert result.code == 2
    assert result.err.strip() == "error: the node name is required: --node or NODE_NAME (or use --dry-run)"


def test_profile_names_round_halves_up_as_go_nvlib_does() -> None:
    """H200: 141 GB total, half of it is 70.5 GB: go-nvlib's math.Round names the profile 3g.71gb."""
    from types import SimpleNamespace

    from optimizer.agent.nvml_common import profile_name

    info = SimpleNamespace(name=b"", memorySizeMB=71_000, sliceCount=3)
    assert profile_name(0, info, 143_771) == "3g.71gb"
    reported = SimpleNamespace(name=b"MIG 3g.71gb", memorySizeMB=71_000, sliceCount=3)
    assert profile_name(0, reported, 143_771) == "3g.71gb"


def test_the_alive_file_is_touched_after_every_step_failed_or_not(tmp_path: Path) -> None:
    """What the DaemonSet's liveness probe reads: the file's age says the loop still turns."""
    from unittest.mock import Mock

    alive = tmp_path / "alive"
    agent = Mock()
    agent.step.side_effect = [Mock(failed=True), Mock(failed=False)]
    waits = iter([False, True])
    run_loop(agent, 0.0, False, lambda _s: next(waits), alive)
    assert agent.step.call_count == 2 and alive.exists()
    agent.step.side_effect = [Mock(failed=False)]
    run_loop(agent, 0.0, True, lambda _s: True, tmp_path / "missing-dir" / "alive")  # unwritable: logged, not raised
