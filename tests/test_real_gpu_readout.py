"""The catalog against what a real GPU said: NVML read-only output recorded on an H100 80GB HBM3 (driver
580.159.04, MIG disabled) with `migopt catalog --from-nvml -o json`, and the node agent's annotation there."""

from __future__ import annotations

import json
from pathlib import Path

from nvidia_protocol.agent_report import NodeGpuReport
from optimizer.agent.nvml_discovery import NvmlGpu, compare_gpu

DATA = Path(__file__).parent / "data"


def test_h100_profiles_ids_placements_and_sms_match_the_catalog() -> None:
    recorded = json.loads((DATA / "h100-80gb-nvml-readout.json").read_text())
    gpu = NvmlGpu.model_validate(recorded[0]["gpu"])
    comparison = compare_gpu(gpu)
    assert comparison.model == "H100-80GB"
    assert [d for d in comparison.differences if d.severity == "mismatch"] == []
    # this driver reports 128-256 MiB more per profile than the catalog's figures: within the minor tolerance
    assert {d.field for d in comparison.differences} <= {"memory_mib"}
    assert {p.name: p.starts for p in gpu.profiles}["3g.40gb"] == [0, 4]


def test_the_agent_annotation_recorded_on_the_h100_parses() -> None:
    report = NodeGpuReport.model_validate_json((DATA / "h100-80gb-agent-annotation.json").read_text())
    assert report.error is None
    assert report.driver == "580.159.04"
    assert [(g.pci_device_id, g.mig_current, g.instances) for g in report.gpus] == [("0x233010DE", False, [])]
