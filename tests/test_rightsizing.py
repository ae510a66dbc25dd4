"""Right-sizing: the smallest profile that covers a pod's usage, with its confidence; advice only."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from optimizer.usage.prometheus import InstanceUsage, UsageReport
from optimizer.usage.rightsizing import RightSizingSettings, recommend, smallest_covering
from solver.catalog import GpuModel, Profile, load_catalog

MODELS = load_catalog().models


def _report(*instances: InstanceUsage, available: bool = True) -> UsageReport:
    return UsageReport(available=available, window_s=3600, percentile=0.95, instances=list(instances))


A100_80 = "NVIDIA A100-SXM4-80GB"


def _usage(
    pod: str | None, profile: str, engine: float | None, fb: float | None, *, model: str = A100_80, samples: int = 100
) -> InstanceUsage:
    return InstanceUsage(
        node="n", gpu=0, gi=1, profile=profile, model_name=model, pod=pod, engine_active=engine, fb_used_mib=fb,
        samples=samples,
    )  # fmt: skip


def _family(p: Profile) -> str:
    return p.name.partition("+")[2]


@st.composite
def _needs(draw: st.DrawFn) -> tuple[GpuModel, Profile, float | None, float]:
    model = draw(st.sampled_from(MODELS))
    like = draw(st.sampled_from(model.profiles))
    top = max(p.memory_mib for p in model.profiles)
    memory = draw(st.none() | st.floats(min_value=0, max_value=top * 1.1, allow_nan=False))
    slices = draw(st.floats(min_value=0, max_value=model.compute_slices + 1, allow_nan=False))
    return model, like, memory, slices


@settings(max_examples=300, deadline=None)
@given(_needs())
def test_smallest_profile_that_covers_is_the_smallest_and_covers(
    case: tuple[GpuModel, Profile, float | None, float],
) -> None:
    model, like, memory, slices = case
    need_mib = memory if memory is not None else like.memory_mib
    covering = [
        p for p in model.profiles
        if _family(p) == _family(like) and p.compute_slices >= slices and p.memory_mib >= need_mib
    ]  # fmt: skip
    best = smallest_covering(model, memory, slices, like=like)
    if not covering:
        assert best is None
        return
    assert best is not None and best in covering
    assert all((best.compute_slices, best.memory_slices) <= (p.compute_slices, p.memory_slices) for p in covering)


def test_an_idle_notebook_on_a_3g_is_told_1g_and_frees_two_slices() -> None:
    rec = recommend(_report(_usage("team-a/notebook", "3g.40gb", 0.1, 2010)))[0]
    # 0.1 x 3 slices x 1.2 = 0.36 slices; 2010 MiB x 1.2 = 2412 MiB: a 1g.10gb covers both
    assert (rec.current_profile, rec.recommended_profile, rec.slices_freed) == ("3g.40gb", "1g.10gb", 2)
    assert rec.model == "A100-80GB" and rec.confident and rec.samples == 100 and rec.window_s == 3600
    assert rec.namespace == "team-a" and rec.name == "notebook"
    assert rec.fb_needed_mib == 2412.0 and rec.slices_needed == 0.36


def test_memory_bound_pod_keeps_the_memory_it_needs() -> None:
    rec = recommend(_report(_usage("ns/kv-cache", "3g.40gb", 0.05, 30000)))[0]
    assert rec.recommended_profile == "3g.40gb" and rec.slices_freed == 0  # 36000 MiB needs a 40 GB profile


def test_missing_framebuffer_never_shrinks_memory() -> None:
    rec = recommend(_report(_usage("ns/infer", "2g.10gb", 0.2, None, model="NVIDIA A100-SXM4-40GB")))[0]
    assert rec.fb_needed_mib is None
    assert rec.recommended_profile == "1g.10gb"  # same memory, fewer slices
    rec = recommend(_report(_usage("ns/infer", "3g.40gb", 0.1, None)))[0]
    assert rec.recommended_profile == "3g.40gb"  # no smaller 40 GB profile on A100-80GB


def test_a_busy_pod_is_told_it_needs_more() -> None:
    rec = recommend(_report(_usage("ns/train", "2g.20gb", 1.0, 19000)))[0]
    assert rec.recommended_slices > 2 and rec.slices_freed < 0


def test_few_samples_are_low_confidence_and_media_profiles_stay_media() -> None:
    recs = recommend(
        _report(_usage("ns/a", "3g.40gb", 0.1, 100, samples=5), _usage("ns/b", "1g.10gb+me", 0.1, 100)),
        RightSizingSettings(min_samples=10),
    )
    by_pod = {r.pod: r for r in recs}
    assert not by_pod["ns/a"].confident
    assert by_pod["ns/b"].recommended_profile == "1g.10gb+me"


def test_unjudgeable_instances_are_left_out_and_unavailable_usage_gives_nothing() -> None:
    report = _report(
        _usage(None, "3g.40gb", 0.1, 100),  # free instance
        _usage("ns/x", "3g.40gb", None, 100),  # no activity series
        _usage("ns/y", "3g.40gb", 0.1, 100, model="Some Unknown GPU"),
        _usage("ns/z", "9g.1gb", 0.1, 100),
    )
    assert recommend(report) == []
    assert recommend(_report(_usage("ns/a", "3g.40gb", 0.1, 100), available=False)) == []


def test_headroom_is_configurable_and_order_is_most_freed_first() -> None:
    usages = (_usage("ns/small", "2g.20gb", 0.3, 100), _usage("ns/big", "7g.80gb", 0.1, 100))
    recs = recommend(_report(*usages))
    assert [r.pod for r in recs] == ["ns/big", "ns/small"]
    tight = recommend(_report(*usages), RightSizingSettings(compute_headroom=0))
    loose = recommend(_report(*usages), RightSizingSettings(compute_headroom=3))
    assert {r.pod: r.recommended_slices for r in tight} == {"ns/big": 1, "ns/small": 1}
    assert {r.pod: r.recommended_slices for r in loose}["ns/small"] == 3  # 0.3 x 2 x 4 = 2.4 slices
