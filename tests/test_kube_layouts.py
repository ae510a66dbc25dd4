"""Which GPU holds what, per source: the agent's annotation, dcgm's pod labels, or conservatively nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvidia_protocol.agent_report import GPU_REPORT_ANNOTATION, NodeGpuReport, ReportedGpu, ReportedInstance
from nvidia_protocol.migparted import node_entry, parse_config, render_config, with_entry
from optimizer.kube.layouts import DeviceHolder, HeldDevices, LayoutSource, resolve_layout
from solver.catalog import load_catalog
from solver.errors import MigoptError

A100 = load_catalog().model("A100-SXM4-40GB")
LABELS = {
    "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB",
    "nvidia.com/gpu.count": "2",
    "nvidia.com/mig.strategy": "mixed",
    "nvidia.com/mig.config": "all-1g.5gb",
    "nvidia.com/mig.config.state": "success",
}


def report(pods: dict[int, str | None], busy: set[int] = frozenset(), error: str | None = None) -> str:
    gpu0 = [
        ReportedInstance(profile="3g.20gb", profile_id=2, gi=1, start=0, size=4, busy=0 in busy, pod=pods.get(0)),
        ReportedInstance(profile="3g.20gb", profile_id=2, gi=2, start=4, size=4, busy=4 in busy, pod=pods.get(4)),
    ]
    gpus = [
        ReportedGpu(index=0, uuid="GPU-0", name="NVIDIA A100-SXM4-40GB", pci_device_id="0x20B010DE",
                    mig_current=True, mig_pending=True, instances=gpu0),
        ReportedGpu(index=1, uuid="GPU-1", name="NVIDIA A100-SXM4-40GB", pci_device_id="0x20B010DE",
                    mig_current=True, mig_pending=True, instances=[]),
    ]  # fmt: skip
    return NodeGpuReport(error=error, gpus=[] if error else gpus, pod_resources=True).to_annotation()


def test_the_agent_report_gives_exact_placements_and_holders() -> None:
    held = [HeldDevices(pod="a/train", requests={"nvidia.com/mig-3g.20gb": 1})]
    annotations = {GPU_REPORT_ANNOTATION: report({4: "a/train"}, busy={4})}
    layout = resolve_layout("n1", LABELS, annotations, None, held, None)
    assert layout.source is LayoutSource.AGENT
    assert [(i.profile, i.start, i.pod) for i in layout.gpus[0].instances] == [
        ("3g.20gb", 0, None),
        ("3g.20gb", 4, "a/train"),
    ]
    assert layout.gpus[1].instances == []
    assert layout.guessed == [] and layout.unattributed == []


def test_a_busy_device_without_a_known_pod_locks_its_gpu() -> None:
    layout = resolve_layout("n1", LABELS, {GPU_REPORT_ANNOTATION: report({}, busy={0})}, None, [], None)
    assert layout.unattributed == [layout.gpus[0].instances[0].pod]
    assert layout.gpus[0].instances[0].pod is not None


def test_an_agent_error_falls_back_to_the_config_and_a_broken_annotation_is_one_line() -> None:
    annotations = {GPU_REPORT_ANNOTATION: report({}, error="NVML unavailable")}
    layout = resolve_layout("n1", LABELS, annotations, None, [], None)
    assert layout.source is LayoutSource.CONSERVATIVE
    assert [len(g.instances) for g in layout.gpus] == [7, 7]
    broken = {GPU_REPORT_ANNOTATION: "{not json"}
    with pytest.raises(MigoptError, match=r"n1.*migopt\.io/gpu-report"):
        resolve_layout("n1", {**LABELS, "nvidia.com/mig.config.state": "pending"}, broken, None, [], None)


def test_dcgm_pod_labels_place_holders_on_their_gpu() -> None:
    held = [HeldDevices(pod="a/x", requests={"nvidia.com/mig-1g.5gb": 1})]
    holders = [DeviceHolder(node="n1", gpu=1, profile="1g.5gb", pod="a/x")]
    layout = resolve_layout("n1", LABELS, {}, None, held, holders)
    assert layout.source is LayoutSource.PROMETHEUS
    assert [sum(i.pod is not None for i in g.instances) for g in layout.gpus] == [0, 1]


def test_without_a_per_gpu_source_every_gpu_that_may_hold_the_pod_is_locked() -> None:
    held = [HeldDevices(pod="a/x", requests={"nvidia.com/mig-1g.5gb": 1})]
    layout = resolve_layout("n1", LABELS, {}, None, held, None)
    assert layout.source is LayoutSource.CONSERVATIVE
    assert layout.guessed == ["a/x"]
    assert all(any(i.pod for i in g.instances) for g in layout.gpus)
    # dcgm that does not know every pod on the node is no better than nothing
    partial = resolve_layout("n1", LABELS, {}, None, [*held, HeldDevices(pod="a/y", requests=held[0].requests)],
                             [DeviceHolder(node="n1", gpu=0, profile="1g.5gb", pod="a/x")])  # fmt: skip
    assert partial.source is LayoutSource.CONSERVATIVE


def test_the_owned_config_entry_gives_each_gpu_its_map() -> None:
    entries = node_entry([(0, A100, {"3g.20gb": 2}), (1, A100, {"7g.40gb": 1})])
    config = parse_config(render_config(with_entry(None, "migopt-abc", entries)))
    labels = {**LABELS, "nvidia.com/mig.config": "migopt-abc"}
    layout = resolve_layout("n1", labels, {}, config, [], None)
    assert [g.mig_devices for g in layout.gpus] == [{"3g.20gb": 2}, {"7g.40gb": 1}]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"nvidia.com/mig.config.state": "pending"}, "not applied"),
        ({"nvidia.com/gpu.product": "NVIDIA-Tesla-T4"}, "unknown GPU model"),
        ({"nvidia.com/mig.config": "migopt-missing"}, "all-|does not cover|unknown"),
        ({"nvidia.com/mig.strategy": "single"}, "single strategy"),
    ],
)
def test_a_node_that_cannot_be_known_is_refused_with_a_reason(change: dict[str, str], reason: str) -> None:
    with pytest.raises(MigoptError, match=reason):
        resolve_layout("n1", {**LABELS, **change}, {}, None, [], None)


@settings(max_examples=60, deadline=None)
@given(
    config=st.sampled_from(["all-1g.5gb", "all-2g.10gb", "all-3g.20gb", "all-balanced"]),
    pods=st.lists(st.sampled_from(["1g.5gb", "2g.10gb", "3g.20gb"]), max_size=6),
)
def test_conservative_layouts_lock_every_gpu_that_may_hold_a_pod(config: str, pods: list[str]) -> None:
    held = [HeldDevices(pod=f"ns/p{n}", requests={f"nvidia.com/mig-{p}": 1}) for n, p in enumerate(pods)]
    layout = resolve_layout("n1", {**LABELS, "nvidia.com/mig.config": config}, {}, None, held, None)
    locked_by = set(layout.guessed) | set(layout.unattributed)
    for gpu in layout.gpus:
        if {i.profile for i in gpu.instances} & set(pods):
            assert any(i.pod in locked_by for i in gpu.instances), gpu
        assert all(i.pod is None or i.pod in locked_by for i in gpu.instances)


def test_a_mig_disabled_gpu_that_a_pod_may_use_whole_keeps_the_node_out_of_planning() -> None:
    recorded = (Path(__file__).parent / "data" / "h100-80gb-agent-annotation.json").read_text()
    labels = {**LABELS, "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "1"}
    idle = resolve_layout("h1", labels, {GPU_REPORT_ANNOTATION: recorded}, None, [], None)
    assert [(g.model, g.instances) for g in idle.gpus] == [("H100-80GB", [])]  # the real H100's report
    whole = [HeldDevices(pod="a/trainer", requests={"nvidia.com/gpu": 1})]
    with pytest.raises(MigoptError, match="MIG disabled and a pod may use it whole"):
        resolve_layout("h1", {**labels, "nvidia.com/mig.config": "all-disabled"}, {GPU_REPORT_ANNOTATION: recorded},
                       None, whole, None)  # fmt: skip


def test_a_pod_the_report_does_not_place_is_never_left_on_a_gpu_that_looks_free() -> None:
    """No pod-resources socket (pods unnamed) and an idle pod (no process): its device still counts as held."""
    idle = [HeldDevices(pod="a/notebook", requests={"nvidia.com/mig-3g.20gb": 1})]
    text = report({}, busy=set()).replace('"pod_resources":true', '"pod_resources":false')
    locked = resolve_layout("n1", LABELS, {GPU_REPORT_ANNOTATION: text}, None, idle, None)
    assert locked.source is LayoutSource.CONSERVATIVE
    assert locked.guessed == ["a/notebook"]
    assert any(i.pod for i in locked.gpus[0].instances)  # the only GPU with 3g.20gb instances is locked
    placed = resolve_layout("n1", LABELS, {GPU_REPORT_ANNOTATION: text}, None, idle,
                            [DeviceHolder(node="n1", gpu=0, profile="3g.20gb", pod="a/notebook")])  # fmt: skip
    assert placed.source is LayoutSource.PROMETHEUS and placed.guessed == []
    assert [i.pod for i in placed.gpus[0].instances] == ["a/notebook", None]
