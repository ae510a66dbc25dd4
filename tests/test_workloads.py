"""Workloads: the trace loader, the gpu_milli → MIG mapping (spec §2.1.5), both replay modes, synthetic pods.

The Alibaba trace is research-use data kept outside the project; tests that need it skip when it is absent.
Small CSVs written here are synthetic, made up for the test.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from simulations.workloads import (
    TIMED_NEEDS_TIMES,
    GpuMilliMapping,
    SyntheticWorkload,
    TraceRow,
    WorkloadPod,
    active_start,
    default_replay,
    generate,
    inflate,
    load_trace,
    summarise,
    timed,
)
from solver.errors import MigoptError


def _trace_dir() -> Path:
    shared = os.environ.get("MIGOPT_SHARED")
    base = Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared"
    return base / "traces" / "alibaba-gpu-v2023"


TRACE_DIR = _trace_dir()
DEFAULT_TRACE = TRACE_DIR / "openb_pod_list_default.csv"
needs_trace = pytest.mark.skipif(
    not DEFAULT_TRACE.is_file(),
    reason=f"Alibaba trace not found at {TRACE_DIR} (set MIGOPT_SHARED to the folder holding traces/)",
)


@pytest.fixture(scope="module")
def rows() -> list[TraceRow]:
    if not DEFAULT_TRACE.is_file():
        pytest.skip(f"Alibaba trace not found at {TRACE_DIR}")
    return load_trace(DEFAULT_TRACE)


def _short(counts: dict[str, int]) -> dict[str, int]:
    return {profile.split(".")[0]: n for profile, n in counts.items()}


def _slices(pod: WorkloadPod, mapping: GpuMilliMapping) -> int:
    return sum(mapping.compute_slices(r.removeprefix("nvidia.com/mig-")) * n for r, n in pod.requests.items())


# --- the default trace against the spec's statistics (§2.1.4) ------------------------------------------------


@needs_trace
def test_default_trace_matches_spec_statistics(rows: list[TraceRow]) -> None:
    assert len(rows) == 8152
    assert Counter(r.num_gpu for r in rows) == {0: 1088, 1: 6989, 2: 16, 4: 15, 8: 44}
    assert sum(r.num_gpu == 1 and r.gpu_milli < 1000 for r in rows) == 3078
    assert all(r.gpu_milli == 1000 for r in rows if r.num_gpu >= 2)
    assert len({r.gpu_milli for r in rows if r.num_gpu == 1}) == 21
    assert Counter(r.qos for r in rows) == {"LS": 4647, "BE": 3398, "Burstable": 100, "Guaranteed": 7}
    assert default_replay(rows) == "timed"
    assert rows[0].line == 2


@needs_trace
@pytest.mark.parametrize("path", sorted(TRACE_DIR.glob("openb_pod_list_*.csv")), ids=lambda p: p.stem)
def test_every_pod_list_loads(path: Path) -> None:
    assert len(load_trace(path)) == 8152


# --- gpu_milli → profile (§2.1.5) ----------------------------------------------------------------------------

# (gpu_milli values, profile if rounded up, profile if rounded to nearest): the spec's table, row by row.
SPEC_TABLE = [
    ((50, 110, 140), "1g.10gb", "1g.10gb"),
    ((160,), "2g.20gb", "1g.10gb"),
    ((220, 230, 270), "2g.20gb", "2g.20gb"),
    ((290, 320, 330, 350), "3g.40gb", "2g.20gb"),
    ((370,), "3g.40gb", "3g.40gb"),
    ((440, 460, 470, 480), "4g.40gb", "3g.40gb"),
    ((550,), "4g.40gb", "4g.40gb"),
    ((590,), "7g.80gb", "4g.40gb"),
    ((650, 810), "7g.80gb", "7g.80gb"),
    ((1000,), "7g.80gb", "7g.80gb"),
]


@pytest.mark.parametrize(("millis", "up", "nearest"), SPEC_TABLE, ids=lambda v: str(v))
def test_mapping_reproduces_spec_table(millis: tuple[int, ...], up: str, nearest: str) -> None:
    for milli in millis:
        assert GpuMilliMapping().profile_for(milli) == up
        assert GpuMilliMapping(rounding="nearest").profile_for(milli) == nearest


@needs_trace
@pytest.mark.parametrize(
    ("rounding", "expected"),
    [
        ("up", {"1g": 32, "2g": 280, "3g": 389, "4g": 971, "7g": 5317}),
        ("nearest", {"1g": 106, "2g": 548, "3g": 946, "4g": 147, "7g": 5242}),
    ],
)
def test_profile_counts_match_spec(rows: list[TraceRow], rounding: str, expected: dict[str, int]) -> None:
    summary = summarise(rows, GpuMilliMapping.model_validate({"rounding": rounding}))
    assert _short(summary.single_gpu_profiles) == expected
    assert (summary.cpu_only, summary.fractional, summary.multi_gpu) == (1088, 3078, 75)


def test_mapping_defaults_and_edges() -> None:
    mapping = GpuMilliMapping()
    assert (mapping.model, mapping.whole_gpu_profile) == ("A100-80GB", "7g.80gb")
    assert [p.name for p in mapping.ladder] == ["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]
    assert mapping.slices_for(1) == 1 and GpuMilliMapping(rounding="nearest").slices_for(1) == 1
    assert GpuMilliMapping(rounding="nearest").slices_for(500) == 4  # 3.5 slices: halves round up
    a30 = GpuMilliMapping(model="A30")
    assert (a30.whole_gpu_profile, a30.profile_for(500), a30.profile_for(600)) == ("4g.24gb", "2g.12gb", "4g.24gb")
    assert GpuMilliMapping(model="NVIDIA-H100-80GB-HBM3").model == "H100-80GB"
    for bad in (0, 1001, -5):
        with pytest.raises(MigoptError, match="gpu_milli"):
            mapping.profile_for(bad)
    with pytest.raises(ValidationError, match="unknown GPU model"):
        GpuMilliMapping(model="V100")
    with pytest.raises(ValidationError, match="unknown MIG profile"):
        GpuMilliMapping(whole_gpu_profile="6g.70gb")


def test_multi_gpu_and_cpu_only_rows() -> None:
    eight = TraceRow(name="p8", cpu_milli=1, memory_mib=1, num_gpu=8, gpu_milli=1000)
    cpu = TraceRow(name="c", cpu_milli=1, memory_mib=1, num_gpu=0, gpu_milli=0)
    assert GpuMilliMapping().demand(eight) == ("7g.80gb", 8)
    assert GpuMilliMapping(whole_gpu_profile="4g.40gb").demand(eight) == ("4g.40gb", 8)
    assert GpuMilliMapping(multi_gpu="skip").demand(eight) is None
    assert GpuMilliMapping().demand(cpu) is None
    summary = summarise([eight, cpu], GpuMilliMapping(multi_gpu="skip"))
    assert (summary.cpu_only, summary.multi_gpu, summary.multi_gpu_dropped) == (1, 1, 1)


# --- the 5-column variant ------------------------------------------------------------------------------------


def _five_column(tmp_path: Path) -> Path:
    path = tmp_path / "five.csv"
    lines = ["name,cpu_milli,memory_mib,num_gpu,gpu_milli", "t-a,1000,2048,1,250", "t-b,2000,4096,0,0"]
    lines += ["t-c,8000,8192,2,1000", "t-d,500,1024,1,1000"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_five_column_variant_inflates_but_cannot_be_timed(tmp_path: Path) -> None:
    rows = load_trace(_five_column(tmp_path))
    assert [r.name for r in rows] == ["t-a", "t-b", "t-c", "t-d"]
    assert not any(r.has_times for r in rows) and all(r.qos is None and r.priority == 0 for r in rows)
    assert default_replay(rows) == "inflate"
    with pytest.raises(MigoptError) as err:
        timed(rows, GpuMilliMapping())
    assert str(err.value) == TIMED_NEEDS_TIMES
    pods = inflate(rows, GpuMilliMapping(), capacity_slices=70)
    assert sum(_slices(p, GpuMilliMapping()) for p in pods) >= 70
    assert {p.source for p in pods} <= {"trace:t-a", "trace:t-c", "trace:t-d"}  # the CPU-only row is never drawn


# --- inflate -------------------------------------------------------------------------------------------------


@needs_trace
@pytest.mark.parametrize(("capacity", "share"), [(7 * 100, 1.0), (7 * 64, 1.3), (7, 0.5)])
def test_inflate_reaches_target_share(rows: list[TraceRow], capacity: int, share: float) -> None:
    mapping = GpuMilliMapping()
    pods = inflate(rows, mapping, capacity_slices=capacity, target_share=share, seed=3)
    slices = [_slices(p, mapping) for p in pods]
    assert sum(slices) >= share * capacity > sum(slices) - slices[-1]
    assert [p.arrival_s for p in pods] == [float(i) for i in range(len(pods))]
    assert all(p.duration_s is None for p in pods)
    assert len({p.name for p in pods}) == len(pods)
    assert all(p.source.startswith("trace:openb-pod-") for p in pods)


@needs_trace
def test_inflate_is_deterministic(rows: list[TraceRow]) -> None:
    mapping = GpuMilliMapping()
    first = inflate(rows, mapping, capacity_slices=700, seed=7)
    assert first == inflate(rows, mapping, capacity_slices=700, seed=7)
    assert first != inflate(rows, mapping, capacity_slices=700, seed=8)


@needs_trace
def test_inflate_priorities_come_from_qos(rows: list[TraceRow]) -> None:
    pods = inflate(rows, GpuMilliMapping(), capacity_slices=7000, seed=1)
    assert {p.priority for p in pods} == {0, 500, 1000}
    by_name = {r.name: r for r in rows}
    expected = {"LS": 1000, "BE": 0, "Burstable": 500, "Guaranteed": 500}
    assert all(p.priority == expected[by_name[p.source.removeprefix("trace:")].qos or ""] for p in pods)


def test_inflate_rejects_bad_arguments(tmp_path: Path) -> None:
    rows = load_trace(_five_column(tmp_path))
    with pytest.raises(MigoptError, match="capacity_slices"):
        inflate(rows, GpuMilliMapping(), capacity_slices=0)
    with pytest.raises(MigoptError, match="target_share"):
        inflate(rows, GpuMilliMapping(), capacity_slices=7, target_share=0.0)
    with pytest.raises(MigoptError, match="no GPU pods"):
        inflate([r for r in rows if r.num_gpu == 0], GpuMilliMapping(), capacity_slices=7)


# --- timed ---------------------------------------------------------------------------------------------------


@needs_trace
def test_timed_arrivals_sorted_non_negative_and_scaled(rows: list[TraceRow]) -> None:
    mapping = GpuMilliMapping()
    start = active_start(rows)
    created = sorted(r.creation_time or 0.0 for r in rows)
    assert sum(c >= start for c in created) >= 0.99 * len(rows) and start > 9.9e6
    real = timed(rows, mapping)
    fast = timed(rows, mapping, time_scale=10.0)
    arrivals = [p.arrival_s for p in real]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0.0 and min(arrivals) >= 0
    assert [p.name for p in fast] == [p.name for p in real]
    for slow, quick in zip(real, fast, strict=True):
        assert quick.arrival_s == pytest.approx(slow.arrival_s / 10)
        assert slow.duration_s is not None and quick.duration_s == pytest.approx(slow.duration_s / 10)
    gpu_rows = {r.name: r for r in rows if r.num_gpu > 0}
    assert len(timed(rows, mapping, start_s=0.0)) == len(gpu_rows) == 7064
    for pod in real[:50]:
        row = gpu_rows[pod.name]
        assert pod.arrival_s == (row.creation_time or 0) - start
        assert pod.duration_s == (row.deletion_time or 0) - (row.creation_time or 0)


@needs_trace
def test_timed_window(rows: list[TraceRow]) -> None:
    day = timed(rows, GpuMilliMapping(), window_s=86400.0)
    assert day and all(0 <= p.arrival_s <= 86400 for p in day)
    assert len(day) < len(timed(rows, GpuMilliMapping(), window_s=7 * 86400.0))


def test_timed_drops_rows_before_start_and_keeps_open_ended(tmp_path: Path) -> None:
    path = tmp_path / "timed.csv"
    header = (
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time"
    )
    body = ["x-1,1,1,1,500,,LS,Running,100,,100", "x-0,1,1,1,100,,BE,Failed,50,80,50"]
    path.write_text("\n".join([header, *body]) + "\n")
    rows = load_trace(path)
    pods = timed(rows, GpuMilliMapping(), start_s=40.0, time_scale=2.0)
    assert [(p.name, p.arrival_s, p.duration_s, p.priority) for p in pods] == [
        ("x-0", 5.0, 15.0, 0),
        ("x-1", 30.0, None, 1000),
    ]
    assert [p.name for p in timed(rows, GpuMilliMapping(), start_s=60.0)] == ["x-1"]
    with pytest.raises(MigoptError, match="time_scale"):
        timed(rows, GpuMilliMapping(), time_scale=0.0)


# --- bad files -----------------------------------------------------------------------------------------------

HEADER = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time"
GOOD = "q-1,1000,1024,1,500,,LS,Running,10,20,10"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "line 1: empty file"),
        ("name,cpu_milli,memory_mib,num_gpu\nq,1,1,1\n", "line 1, column 'gpu_milli': missing from the header"),
        (HEADER.replace(",deletion_time", "") + "\n", "line 1, column 'deletion_time': missing"),
        (f"{HEADER}\n", "no data rows"),
        (
            f"{HEADER}\n{GOOD}\nq-2,abc,1024,1,500,,LS,Running,10,20,10\n",
            "line 3, column 'cpu_milli': expected a whole",
        ),
        (f"{HEADER}\nq-2,1000,1024,1,500,,LS,Running,soon,20,10\n", "line 2, column 'creation_time'"),
        (
            f"{HEADER}\nq-2,1000,1024,1,500,,LS,Running,10\n",
            "line 2, column 'deletion_time': expected 11 fields, got 9",
        ),
        (f"{HEADER}\n{GOOD}\n{GOOD},7\n", "line 3, column '(extra)': expected 11 fields, got 12"),
        (f"{HEADER}\nq-2,1000,1024,1,500,,VIP,Running,10,20,10\n", "line 2, column 'qos': unknown QoS class 'VIP'"),
        (f"{HEADER}\nq-2,1000,1024,1,500,,LS,Running,30,20,10\n", "line 2, column 'deletion_time': 20 is before"),
        (f"{HEADER}\nq-2,1000,1024,1,1500,,LS,Running,10,20,10\n", "line 2, column 'gpu_milli': must be at most"),
        (f"{HEADER}\nq-2,1000,1024,-1,500,,LS,Running,10,20,10\n", "line 2, column 'num_gpu': must not be negative"),
        (f"{HEADER}\nq-2,1000,1024,1,500,,LS,Running,,20,10\n", "line 2, column 'creation_time': empty"),
        ("name,cpu_milli,memory_mib,num_gpu,gpu_milli\nq,1,1,1,0\n", "line 2, column 'gpu_milli': is 0"),
    ],
    ids=lambda v: v[:30] if isinstance(v, str) else str(v),
)
def test_bad_csv_gives_one_line_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(MigoptError) as err:
        load_trace(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path)) and expected in message


def test_missing_file_is_a_migopt_error(tmp_path: Path) -> None:
    with pytest.raises(MigoptError, match="cannot read trace"):
        load_trace(tmp_path / "absent.csv")


# --- synthetic -----------------------------------------------------------------------------------------------


def _spec(**overrides: object) -> SyntheticWorkload:
    fields: dict[str, object] = {
        "arrival_rate_per_s": 2.0,
        "duration_mean_s": 100.0,
        "profile_mix": {"1g.10gb": 6.0, "3g.40gb": 3.0, "7g.80gb": 1.0},
        "priorities": {0: 1.0, 1000: 1.0},
        "selector_fraction": 0.25,
        "selectors": [{"pool": "a"}, {"pool": "b"}],
        "pods": 4000,
        "seed": 11,
    }
    return SyntheticWorkload.model_validate(fields | overrides)


def test_synthetic_is_deterministic_and_sorted() -> None:
    pods = generate(_spec())
    assert pods == generate(_spec()) and pods != generate(_spec(seed=12))
    assert pods == generate(_spec(profile_mix={"7g.80gb": 1.0, "3g.40gb": 3.0, "1g.10gb": 6.0}))
    assert len(pods) == 4000 and len({p.name for p in pods}) == 4000
    arrivals = [p.arrival_s for p in pods]
    assert arrivals == sorted(arrivals) and arrivals[0] > 0
    assert all(p.source == "synthetic" for p in pods)


def test_synthetic_respects_mix_rates_and_selectors() -> None:
    pods = generate(_spec())
    shares = Counter(next(iter(p.requests)) for p in pods)
    assert shares["nvidia.com/mig-1g.10gb"] / 4000 == pytest.approx(0.6, abs=0.04)
    assert shares["nvidia.com/mig-3g.40gb"] / 4000 == pytest.approx(0.3, abs=0.04)
    assert shares["nvidia.com/mig-7g.80gb"] / 4000 == pytest.approx(0.1, abs=0.03)
    assert Counter(p.priority for p in pods)[1000] / 4000 == pytest.approx(0.5, abs=0.04)
    assert sum(bool(p.node_selector) for p in pods) / 4000 == pytest.approx(0.25, abs=0.04)
    assert {tuple(p.node_selector.items()) for p in pods if p.node_selector} == {(("pool", "a"),), (("pool", "b"),)}
    assert pods[-1].arrival_s / 4000 == pytest.approx(0.5, rel=0.1)  # rate 2/s
    assert statistics.fmean(p.duration_s or 0 for p in pods) == pytest.approx(100, rel=0.1)
    lognormal = generate(_spec(duration_dist="lognormal", duration_sigma=0.5))
    assert statistics.fmean(p.duration_s or 0 for p in lognormal) == pytest.approx(100, rel=0.1)


def test_synthetic_horizon_and_validation() -> None:
    pods = generate(_spec(pods=None, horizon_s=500.0))
    assert pods and all(p.arrival_s <= 500 for p in pods) and 800 < len(pods) < 1200
    assert len(generate(_spec(pods=10, horizon_s=500.0))) == 10
    with pytest.raises(MigoptError, match=r"unknown MIG profile '5g\.60gb'"):
        generate(_spec(profile_mix={"1g.10gb": 1.0, "5g.60gb": 1.0}))
    assert generate(_spec(profile_mix={"1g.6gb+me": 1.0}, pods=3))[0].requests == {"nvidia.com/mig-1g.6gb.me": 1}
    bad_fields: list[dict[str, object]] = [
        {"pods": None},
        {"selectors": []},
        {"profile_mix": {"1g.10gb": 0.0}},
        {"arrival_rate_per_s": 0},
    ]
    for bad in bad_fields:
        with pytest.raises(ValidationError):
            _spec(**bad)


def test_workload_pod_is_frozen_and_checked() -> None:
    pod = WorkloadPod(name="p", arrival_s=0, duration_s=None, requests={"nvidia.com/mig-1g.10gb": 1}, source="x")
    with pytest.raises(ValidationError):
        pod.name = "q"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        WorkloadPod(name="p", arrival_s=-1, requests={"nvidia.com/mig-1g.10gb": 1}, source="x")
    with pytest.raises(ValidationError):
        WorkloadPod(name="p", arrival_s=0, requests={"nvidia.com/mig-1g.10gb": 0}, source="x")
