"""Geometry against the spec's counts (§4.4) and against a brute-force oracle written here."""

import itertools
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from solver.catalog import GpuModel, load_catalog
from solver.geometry import (
    Instance,
    can_create_keeping,
    check_layout,
    explain_map,
    feasible_maps,
    find_layout,
    layouts_for_map,
    maximal_layouts,
    maximal_maps,
)

A100 = load_catalog().model("A100-40GB")
CLASSIC = ["1g.5gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"]


def oracle_feasible(model: GpuModel, devices: dict[str, int]) -> bool:
    """Try every assignment of allowed starts to every instance; independent of solver.geometry's search."""
    instances = [model.profile(n) for n, c in devices.items() for _ in range(c)]
    if not instances:
        return True
    for name, count in devices.items():
        if count > model.profile(name).max_count:
            return False
    if sum(p.compute_slices for p in instances) > model.compute_slices:
        return False
    for starts in itertools.product(*(p.starts for p in instances)):
        slices = [s + k for p, s in zip(instances, starts, strict=True) for k in range(p.memory_slices)]
        if len(slices) == len(set(slices)):
            return True
    return False


def test_classic_a100_profiles_have_37_maps_and_19_maximal_layouts() -> None:
    assert len(feasible_maps(A100, CLASSIC)) == 37
    layouts = maximal_layouts(A100, CLASSIC)
    assert len(layouts) == 19
    assert len({frozenset(Counter(i.profile for i in layout).items()) for layout in layouts}) == 14


def test_all_a100_profiles_match_the_spec_counts() -> None:
    assert len(feasible_maps(A100)) == 127
    layouts = maximal_layouts(A100)
    assert len(layouts) == 239
    assert len({frozenset(Counter(i.profile for i in layout).items()) for layout in layouts}) == 64


def test_a30_has_five_maximal_layouts() -> None:
    assert len(maximal_layouts(load_catalog().model("A30"), ["1g.6gb", "2g.12gb", "4g.24gb"])) == 5


def test_maximal_maps_cannot_grow() -> None:
    maps = feasible_maps(A100, CLASSIC)
    keys = {frozenset(m.items()) for m in maps}
    for m in maximal_maps(A100, CLASSIC):
        for name in CLASSIC:
            grown = Counter(m)
            grown[name] += 1
            assert frozenset(grown.items()) not in keys
    assert {"3g.20gb": 1, "1g.5gb": 3} not in maximal_maps(A100, CLASSIC)  # {3g, 4x1g} exists
    assert {"4g.20gb": 1, "3g.20gb": 1} in maximal_maps(A100, CLASSIC)


def test_enumerated_maps_are_exactly_the_oracles() -> None:
    """Every map within the per-profile maxima: enumerated iff the oracle finds a placement."""
    enumerated = {frozenset(m.items()) for m in feasible_maps(A100, CLASSIC)}
    ranges = [range(A100.profile(n).max_count + 1) for n in CLASSIC]
    for counts in itertools.product(*ranges):
        devices = {n: c for n, c in zip(CLASSIC, counts, strict=True) if c}
        if devices:
            assert (frozenset(devices.items()) in enumerated) == oracle_feasible(A100, devices), devices


map_strategy = st.dictionaries(
    st.sampled_from([*CLASSIC, "1g.10gb", "1g.5gb+me"]), st.integers(min_value=0, max_value=4), min_size=1
)


@settings(max_examples=300, deadline=None)
@given(map_strategy)
def test_check_agrees_with_the_oracle_with_1g10gb(devices: dict[str, int]) -> None:
    devices = {n: c for n, c in devices.items() if c}
    reason = explain_map(A100, devices)
    assert (reason is None) == oracle_feasible(A100, devices), (devices, reason)
    layout = find_layout(A100, devices)
    if reason is None:
        assert layout is not None and check_layout(A100, layout) == []
        assert Counter(i.profile for i in layout) == Counter(devices)
    else:
        assert layout is None


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_keeping_instances_is_exact(data: st.DataObject) -> None:
    layouts = maximal_layouts(A100)
    layout = data.draw(st.sampled_from(layouts))
    keep = data.draw(st.lists(st.sampled_from(layout), unique=True))
    target = data.draw(map_strategy)
    target = {n: c for n, c in target.items() if c}
    result = find_layout(A100, target, keep)
    if result is None:
        # the oracle: no layout of the target contains the kept instances
        assert not any(set(keep) <= set(candidate) for candidate in layouts_for_map(A100, target))
    else:
        assert set(keep) <= set(result) and check_layout(A100, result) == []
        assert Counter(i.profile for i in result) == Counter(target)
    assert can_create_keeping(A100, target, keep) == (result is not None)


def test_layout_check_reports_every_problem() -> None:
    problems = check_layout(
        A100,
        [
            Instance(profile="3g.20gb", start=2),
            Instance(profile="4g.20gb", start=0),
            Instance(profile="3g.20gb", start=4),
            Instance(profile="1g.5gb", start=4),
        ],
    )
    assert any("cannot start at memory slice 2" in p for p in problems)
    assert any("overlaps" in p for p in problems)
    assert any("compute slices" in p for p in problems)


def test_explanations_name_the_limit() -> None:
    assert explain_map(A100, {"3g.20gb": 3}) == "3x 3g.20gb exceeds the maximum of 2"
    assert "compute slices" in (explain_map(A100, {"4g.20gb": 1, "3g.20gb": 1, "1g.5gb": 1}) or "")
    assert explain_map(A100, {"4g.20gb": 1, "1g.10gb": 2}) is None  # 4g@0, 1g.10gb@4 and @6


def test_placement_blocks_a_map_only_when_instances_stay() -> None:
    """On A100 the slice totals decide a map; kept instances are what make placement matter."""
    kept = [Instance(profile="1g.5gb", start=4)]
    assert can_create_keeping(A100, {"3g.20gb": 1, "1g.5gb": 1}, kept)  # 3g@0
    assert can_create_keeping(A100, {"4g.20gb": 1, "3g.20gb": 1}, [])
    assert can_create_keeping(A100, {"3g.20gb": 1, "2g.10gb": 1, "1g.5gb": 1}, [])
    assert not can_create_keeping(A100, {"3g.20gb": 1, "2g.10gb": 1, "1g.5gb": 1}, kept)
    assert not can_create_keeping(A100, {"4g.20gb": 1, "1g.5gb": 1}, [Instance(profile="1g.5gb", start=2)])


def test_every_model_enumerates_and_every_map_has_a_layout() -> None:
    for model in load_catalog().models:
        maps = feasible_maps(model)
        assert maps, model.key
        for devices in maps:
            layout = find_layout(model, devices)
            assert layout is not None and check_layout(model, layout) == [], (model.key, devices)
