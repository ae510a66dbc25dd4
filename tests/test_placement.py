"""The driver's placement rule and mig-parted's orderings against the documented A100 examples (spec §4.5)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.placement import ALL_ORDERINGS_FAILED, apply_map, auto_place, create_in_order, distinct_permutations
from solver.catalog import load_catalog
from solver.geometry import Instance, check_layout, feasible_maps

A100 = load_catalog().model("A100-40GB")
BY_ID = {p.id: p.name for p in A100.profiles}


def created(ids: list[int]) -> list[int | None]:
    layout: list[Instance] = []
    starts: list[int | None] = []
    for profile_id in ids:
        start = auto_place(A100, layout, BY_ID[profile_id])
        starts.append(start)
        if start is None:
            break
        layout.append(Instance(profile=BY_ID[profile_id], start=start))
    return starts


def test_documented_creation_orders() -> None:
    assert created([19, 14, 5]) == [6, 4, 0]
    assert created([19, 19, 14, 9])[0] == 6 and created([19, 19, 14, 9])[-1] is None  # 3g.20gb: Insufficient
    assert created([9, 19, 14, 19]) == [4, 0, 2, 1]
    assert created([14, 19, 19, 19, 19, 19]) == [4, 6, 0, 1, 2, 3]
    assert sorted(created([19] * 7)) == [0, 1, 2, 3, 4, 5, 6]  # type: ignore[type-var]
    assert sorted(created([14] * 3)) == [0, 2, 4]  # type: ignore[type-var]


def test_orderings_rescue_a_map_the_first_order_cannot_create() -> None:
    five, ten = A100.profile("1g.5gb"), A100.profile("1g.10gb")
    layout, error = create_in_order(A100, [five] * 6 + [ten])
    assert layout is None and error is not None and "Insufficient Resources" in error
    layout, log = apply_map(A100, {"1g.5gb": 6, "1g.10gb": 1})  # mig-parted's first order puts 1g.5gb first here
    assert layout is not None and check_layout(A100, layout) == []
    assert log and "Insufficient Resources" in log[0]


def test_infeasible_map_fails_every_ordering() -> None:
    layout, log = apply_map(A100, {"4g.20gb": 1, "3g.20gb": 1, "1g.5gb": 1})
    assert layout is None and log[-1] == ALL_ORDERINGS_FAILED


def test_permutations_are_distinct_and_start_with_the_given_order() -> None:
    items = [A100.profile("3g.20gb"), A100.profile("1g.5gb"), A100.profile("1g.5gb")]
    orders = [[p.name for p in order] for order in distinct_permutations(items)]
    assert orders[0] == ["3g.20gb", "1g.5gb", "1g.5gb"]
    assert len(orders) == 3 and len({tuple(o) for o in orders}) == 3


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([m.key for m in load_catalog().models]), st.data())
def test_every_feasible_map_is_created_by_some_ordering(model_key: str, data: st.DataObject) -> None:
    model = load_catalog().model(model_key)
    devices = data.draw(st.sampled_from(feasible_maps(model)))
    layout, _ = apply_map(model, devices)
    assert layout is not None and check_layout(model, layout) == []
    assert sorted(i.profile for i in layout) == sorted(n for n, c in devices.items() for _ in range(c))
